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
SAME(2, CUDA_ERROR_OUT_OF_MEMORY);
SAME(3, CUDA_ERROR_NOT_INITIALIZED);
SAME(100, CUDA_ERROR_NO_DEVICE);
SAME(205, CUDA_ERROR_MAP_FAILED);
SAME(500, CUDA_ERROR_NOT_FOUND);
SAME(704, CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED);
SAME(801, CUDA_ERROR_NOT_SUPPORTED);
SAME(900, CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
SAME(999, CUDA_ERROR_UNKNOWN);
SAME(11, CU_POINTER_ATTRIBUTE_RANGE_START_ADDR);
SAME(12, CU_POINTER_ATTRIBUTE_RANGE_SIZE);
SAME(1, CU_GET_PROC_ADDRESS_LEGACY_STREAM);
SAME(2, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM);
SAME(0, CU_GET_PROC_ADDRESS_SUCCESS);
SAME(1, CU_STREAM_NON_BLOCKING); /* order.c */
SAME(0, cudaSuccess);
SAME(1, cudaErrorInvalidValue);
SAME(2, cudaErrorMemoryAllocation);
SAME(3, cudaErrorInitializationError);
SAME(704, cudaErrorPeerAccessAlreadyEnabled);
SAME(801, cudaErrorNotSupported);

/* ipc.c answers the runtime's IPC calls with the driver's codes: each must be
 * the runtime's code for the same failure. */
SAME(CUDA_ERROR_INVALID_VALUE, cudaErrorInvalidValue);
SAME(CUDA_ERROR_OUT_OF_MEMORY, cudaErrorMemoryAllocation);
SAME(CUDA_ERROR_NOT_INITIALIZED, cudaErrorInitializationError);
SAME(CUDA_ERROR_NO_DEVICE, cudaErrorNoDevice);
SAME(CUDA_ERROR_MAP_FAILED, cudaErrorMapBufferObjectFailed);
SAME(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, cudaErrorStreamCaptureUnsupported);
SAME(CUDA_ERROR_UNKNOWN, cudaErrorUnknown);

/* IPC memory handles: 64 bytes with byte alignment, at both levels, so that
 * preload.h's pl_ipc_handle (unsigned char[64] in a struct) is passed by value
 * exactly as they are (a struct of that size and alignment goes in memory on
 * x86-64 and by reference on AArch64, whatever its element type). */
SAME(64, CU_IPC_HANDLE_SIZE);
SAME(64, CUDA_IPC_HANDLE_SIZE);
SAME(1, CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS);
SAME(1, cudaIpcMemLazyEnablePeerAccess);
_Static_assert(sizeof(CUipcMemHandle) == 64 && _Alignof(CUipcMemHandle) == 1, "CUipcMemHandle is 64 bytes, aligned to 1");
_Static_assert(sizeof(cudaIpcMemHandle_t) == 64 && _Alignof(cudaIpcMemHandle_t) == 1,
               "cudaIpcMemHandle_t is 64 bytes, aligned to 1");

_Static_assert(sizeof(CUresult) == sizeof(int), "CUresult is an int");
_Static_assert(sizeof(cudaError_t) == sizeof(int), "cudaError_t is an int");
_Static_assert(sizeof(CUpointer_attribute) == sizeof(int), "CUpointer_attribute is an int");
_Static_assert(sizeof(CUdriverProcAddressQueryResult) == sizeof(int), "the symbol status is an int");
_Static_assert(sizeof(CUdeviceptr) == sizeof(unsigned long long), "CUdeviceptr is 64 bits");
_Static_assert(sizeof(CUdevice) == sizeof(int), "CUdevice is an int");
_Static_assert(sizeof(cuuint64_t) == sizeof(uint64_t), "cuGetProcAddress flags are 64 bits");

/* ISO C wants a translation unit to declare something. */
typedef int gpuheap_preload_abi_checked;
