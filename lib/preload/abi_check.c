/*
 * abi_check.c — the interposer's hand-written CUDA ABI, checked against the
 * toolkit's headers.
 *
 * preload.h declares the few CUDA types and constants the interposer uses, so
 * that it builds where no CUDA toolkit is installed. Where cuda.h and
 * cuda_runtime_api.h are found, this file (built only then, and never including
 * preload.h, whose prototypes use the ABI types rather than the headers') fails
 * the build if any of them disagrees. It holds no code.
 */
#include <cuda.h>
#include <cuda_runtime_api.h>
#include <stdint.h>

#define SAME(a, b) _Static_assert((long long)(a) == (long long)(b), #a " must equal " #b)

/* The values preload.h gives, repeated here without its prototypes. */
SAME(0, CUDA_SUCCESS);
SAME(1, CUDA_ERROR_INVALID_VALUE);
SAME(3, CUDA_ERROR_NOT_INITIALIZED);
SAME(500, CUDA_ERROR_NOT_FOUND);
SAME(704, CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED);
SAME(801, CUDA_ERROR_NOT_SUPPORTED);
SAME(11, CU_POINTER_ATTRIBUTE_RANGE_START_ADDR);
SAME(12, CU_POINTER_ATTRIBUTE_RANGE_SIZE);
SAME(1, CU_GET_PROC_ADDRESS_LEGACY_STREAM);
SAME(2, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM);
SAME(0, CU_GET_PROC_ADDRESS_SUCCESS);
SAME(0, cudaSuccess);
SAME(1, cudaErrorInvalidValue);
SAME(3, cudaErrorInitializationError);
SAME(704, cudaErrorPeerAccessAlreadyEnabled);
SAME(801, cudaErrorNotSupported);

_Static_assert(sizeof(CUresult) == sizeof(int), "CUresult is an int");
_Static_assert(sizeof(cudaError_t) == sizeof(int), "cudaError_t is an int");
_Static_assert(sizeof(CUpointer_attribute) == sizeof(int), "CUpointer_attribute is an int");
_Static_assert(sizeof(CUdriverProcAddressQueryResult) == sizeof(int), "the symbol status is an int");
_Static_assert(sizeof(CUdeviceptr) == sizeof(unsigned long long), "CUdeviceptr is 64 bits");
_Static_assert(sizeof(CUdevice) == sizeof(int), "CUdevice is an int");
_Static_assert(sizeof(cuuint64_t) == sizeof(uint64_t), "cuGetProcAddress flags are 64 bits");

/* ISO C wants a translation unit to declare something. */
typedef int gpuheap_preload_abi_checked;
