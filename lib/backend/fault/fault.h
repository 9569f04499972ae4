/*
 * fault.h — a backend wrapper that fails the Nth call on demand (fault.c), for
 * the fault-injection tests and the fuzzer.
 */
#ifndef GPUHEAP_BACKEND_FAULT_H
#define GPUHEAP_BACKEND_FAULT_H

#include <stdbool.h>
#include <stdint.h>

#include "backend/door.h"

#define VMM_FAULT_LOG 4096

/* What the wrapper saw, in memory the caller owns (it outlives the backend).
 * Written without a lock: meant for one thread at a time. */
typedef struct vmm_fault_report {
    uint64_t calls;                  /* backend calls seen, failed ones included */
    uint64_t per_op[VMM_OP_COUNT];
    uint8_t log[VMM_FAULT_LOG];      /* the vmm_op of each of the first VMM_FAULT_LOG calls */
    uint64_t injected;               /* calls failed on purpose */
    int first_op;                    /* the vmm_op of the first injected failure */
    bool closed;                     /* the heap closed the backend */
    vmm_host_counts at_close;        /* the inner host backend's counts just before it closed */
} vmm_fault_report;

/* Wraps inner (which the wrapper closes when it is closed); report may be NULL. */
int vmm_fault_open(vmm_backend *inner, vmm_fault_report *report, vmm_backend **out);
/* Fails the nth backend call from now (1 = the next one) with error (0 = the op's
 * natural error: create out of memory, reserve out of VA, else GPU_ERR_BACKEND);
 * persistent: that call and every later one. nth 0 disarms. */
void vmm_fault_arm(vmm_backend *b, uint64_t nth, bool persistent, int error);
/* Fails the nth call of one vmm_op from now, once (other ops pass). */
void vmm_fault_arm_op(vmm_backend *b, int op, uint64_t nth, int error);
/* Calls fn(op, arg) before each call the wrapper lets through (NULL: none); the
 * heap calls the backend with its lock dropped, so fn may call into the heap. */
void vmm_fault_hook(vmm_backend *b, void (*fn)(int op, void *arg), void *arg);
/* Backend calls seen since open. */
uint64_t vmm_fault_calls(vmm_backend *b);
const char *vmm_op_name(int op);

#endif /* GPUHEAP_BACKEND_FAULT_H */
