/*
 * fault.c — a backend that forwards to another one and fails on demand.
 *
 * A heap that is only ever tested against a driver that always works has never
 * had its error paths run. This wrapper sits between the heap and a real backend
 * (the host backend, in tests and the fuzzer), counts every call it forwards, and
 * can be told to fail the Nth call from now — once, or that call and every one
 * after it (a driver whose context is lost). A failed call does nothing to the
 * backend below, exactly like a driver call that was refused, and returns an
 * error: the one the caller asked for, or the op's natural one (create: out of
 * memory; reserve: out of address space; the rest: GPU_ERR_BACKEND).
 *
 * So a test can run a workload once to count its N calls, then once per N with
 * that call failing, and prove that each failure comes back to the caller as a
 * clean error and leaves nothing behind (jemalloc's extent hooks that can be told
 * to fail are the model). The wrapper also records the op of each call, so a
 * test knows which kind of call it broke, and, when the heap closes it, the host
 * backend's counts just before the host backend goes: a leak of a handle, a
 * mapping or a reservation shows there even though the backend itself is gone.
 * A test may instead fail the Nth call of one op (vmm_fault_arm_op), and may hook
 * every call that goes through (vmm_fault_hook: the heap calls the backend with its
 * lock dropped, so a hook can call into the heap in the middle of an operation).
 * The calls the door does not count (event release, capture state, file-backed
 * transfers) pass straight through.
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/fault/fault.h"
#include "common.h"

typedef struct fault_backend {
    vmm_backend base; /* first, so a vmm_backend * is a fault_backend * */
    vmm_ops ops;      /* fault_ops, less the optional ops the inner backend lacks */
    vmm_backend *inner;
    vmm_fault_report *report;
    _Atomic uint64_t calls;   /* forwarded or failed, since open */
    _Atomic uint64_t fail_at; /* 1-based call index to fail; 0 = none */
    _Atomic bool persistent;  /* fail fail_at and every call after it */
    _Atomic int error;        /* 0 = the op's natural error */
    _Atomic int only_op;      /* -1: fail_at counts every call; else only calls of this vmm_op */
    void (*hook)(int op, void *arg); /* called before each forwarded call (tests) */
    void *hook_arg;
    _Atomic uint64_t op_calls[VMM_OP_COUNT];
} fault_backend;

static const vmm_ops fault_ops;

/* The wrapper behind a vmm_backend. */
static inline fault_backend *fault_of(vmm_backend *b) { return (fault_backend *)b; }

/* The error a refused call of op returns when none was asked for. */
static int natural_error(vmm_op op) {
    switch (op) {
    case VMM_OP_CREATE: return GPU_ERR_OUT_OF_MEMORY;
    case VMM_OP_RESERVE: return GPU_ERR_OUT_OF_VA;
    default: return GPU_ERR_BACKEND;
    }
}

static const char *const op_names[VMM_OP_COUNT] = {
    [VMM_OP_RESERVE] = "reserve", [VMM_OP_UNRESERVE] = "unreserve", [VMM_OP_CREATE] = "create",
    [VMM_OP_RELEASE] = "release", [VMM_OP_MAP] = "map",             [VMM_OP_UNMAP] = "unmap",
    [VMM_OP_SET_ACCESS] = "set_access", [VMM_OP_FENCE] = "fence",   [VMM_OP_MEMSET] = "memset",
    [VMM_OP_COPY] = "copy", [VMM_OP_EVENT_RECORD] = "event_record", [VMM_OP_EVENT_QUERY] = "event_query",
    [VMM_OP_EVENT_WAIT] = "event_wait", [VMM_OP_STAGING] = "staging", [VMM_OP_TRANSFER] = "transfer",
    [VMM_OP_REGISTER] = "register", [VMM_OP_DIRECT] = "direct", [VMM_OP_GRANT] = "grant",
    [VMM_OP_EXPORT] = "export_fd", [VMM_OP_IMPORT] = "import_fd",
};

const char *vmm_op_name(int op) { return op >= 0 && op < VMM_OP_COUNT && op_names[op] ? op_names[op] : "?"; }

/* Counts a call of op; returns GPU_OK when it may go through, else the injected error. */
static int fault_enter(fault_backend *fb, vmm_op op) {
    uint64_t n = atomic_fetch_add(&fb->calls, 1) + 1, at = atomic_load(&fb->fail_at);
    uint64_t k = atomic_fetch_add(&fb->op_calls[op], 1) + 1;
    int only = atomic_load(&fb->only_op);
    vmm_fault_report *r = fb->report;
    if (r) {
        if (n <= VMM_FAULT_LOG) r->log[n - 1] = (uint8_t)op;
        r->calls = n;
        r->per_op[op]++;
    }
    if (only >= 0) n = (int)op == only ? k : 0; /* counting calls of one op only: the others always pass */
    bool fail = at && n && (n == at || (n > at && atomic_load(&fb->persistent)));
    if (!fail) {
        if (fb->hook) fb->hook((int)op, fb->hook_arg);
        return GPU_OK;
    }
    int err = atomic_load(&fb->error);
    if (!err) err = natural_error(op);
    if (r) {
        if (!r->injected) r->first_op = (int)op;
        r->injected++;
    }
    return vmm_fail(&fb->base, err, "injected fault: %s (backend call %llu) refused with %s", vmm_op_name(op),
                    (unsigned long long)n, gpu_strerror(err));
}

/* Passes a forwarded call's result up (the inner backend's message is already
 * the thread's: vmm_error). */
static int fault_leave(fault_backend *fb, int rc) {
    (void)fb;
    return rc;
}

#define FORWARD(b, op, call)                                  \
    do {                                                      \
        fault_backend *fb_ = fault_of(b);                     \
        int rc_ = fault_enter(fb_, op);                       \
        if (rc_ != GPU_OK) return rc_;                        \
        return fault_leave(fb_, fb_->inner->ops->call);       \
    } while (0)

static int fault_reserve(vmm_backend *b, size_t size, size_t align, uintptr_t *va) {
    FORWARD(b, VMM_OP_RESERVE, reserve(fault_of(b)->inner, size, align, va));
}
static int fault_unreserve(vmm_backend *b, uintptr_t va, size_t size) {
    FORWARD(b, VMM_OP_UNRESERVE, unreserve(fault_of(b)->inner, va, size));
}
static int fault_create(vmm_backend *b, size_t size, vmm_handle *out) {
    FORWARD(b, VMM_OP_CREATE, create(fault_of(b)->inner, size, out));
}
static int fault_release(vmm_backend *b, vmm_handle h) {
    FORWARD(b, VMM_OP_RELEASE, release(fault_of(b)->inner, h));
}
static int fault_map(vmm_backend *b, uintptr_t va, size_t size, vmm_handle h) {
    FORWARD(b, VMM_OP_MAP, map(fault_of(b)->inner, va, size, h));
}
static int fault_unmap(vmm_backend *b, uintptr_t va, size_t size) {
    FORWARD(b, VMM_OP_UNMAP, unmap(fault_of(b)->inner, va, size));
}
static int fault_set_access(vmm_backend *b, uintptr_t va, size_t size, gpu_prot_t prot) {
    FORWARD(b, VMM_OP_SET_ACCESS, set_access(fault_of(b)->inner, va, size, prot));
}
static int fault_grant(vmm_backend *b, uintptr_t va, size_t size, int device, gpu_prot_t prot) {
    FORWARD(b, VMM_OP_GRANT, grant(fault_of(b)->inner, va, size, device, prot));
}
static int fault_export_fd(vmm_backend *b, vmm_handle h, int *fd) {
    FORWARD(b, VMM_OP_EXPORT, export_fd(fault_of(b)->inner, h, fd));
}
static int fault_import_fd(vmm_backend *b, int fd, size_t size, vmm_handle *out) {
    FORWARD(b, VMM_OP_IMPORT, import_fd(fault_of(b)->inner, fd, size, out));
}
static int fault_fence(vmm_backend *b) { FORWARD(b, VMM_OP_FENCE, fence(fault_of(b)->inner)); }
static int fault_memset(vmm_backend *b, uintptr_t va, int byte, size_t size) {
    FORWARD(b, VMM_OP_MEMSET, memset(fault_of(b)->inner, va, byte, size));
}
static int fault_copy(vmm_backend *b, uintptr_t dst, uintptr_t src, size_t size) {
    FORWARD(b, VMM_OP_COPY, copy(fault_of(b)->inner, dst, src, size));
}
static int fault_event_record(vmm_backend *b, uintptr_t stream, vmm_event *out) {
    FORWARD(b, VMM_OP_EVENT_RECORD, event_record(fault_of(b)->inner, stream, out));
}

static int fault_fence_record(vmm_backend *b, uintptr_t stream, vmm_event *out) {
    FORWARD(b, VMM_OP_EVENT_RECORD, fence_record(fault_of(b)->inner, stream, out));
}
static int fault_fence_order(vmm_backend *b, uintptr_t stream, vmm_event *out) {
    FORWARD(b, VMM_OP_EVENT_RECORD, fence_order(fault_of(b)->inner, stream, out));
}
static int fault_event_query(vmm_backend *b, vmm_event ev) {
    FORWARD(b, VMM_OP_EVENT_QUERY, event_query(fault_of(b)->inner, ev));
}
static int fault_event_wait(vmm_backend *b, vmm_event ev) {
    FORWARD(b, VMM_OP_EVENT_WAIT, event_wait(fault_of(b)->inner, ev));
}

/* The rest pass through uncounted: they cannot fail (release, capture state), or
 * belong to file-backed memory, whose calls the door does not count either. */
#define INNER(b) (fault_of(b)->inner)
static void fault_event_release(vmm_backend *b, vmm_event ev) { INNER(b)->ops->event_release(INNER(b), ev); }
static int fault_capturing(vmm_backend *b, uintptr_t stream) { return INNER(b)->ops->capturing(INNER(b), stream); }
static int fault_staging_alloc(vmm_backend *b, size_t size, void **out) {
    return fault_leave(fault_of(b), INNER(b)->ops->staging_alloc(INNER(b), size, out));
}
static void fault_staging_free(vmm_backend *b, void *p, size_t size) { INNER(b)->ops->staging_free(INNER(b), p, size); }
static int fault_queue_open(vmm_backend *b, unsigned slots, vmm_queue **out) {
    return fault_leave(fault_of(b), INNER(b)->ops->queue_open(INNER(b), slots, out));
}
static void fault_queue_close(vmm_backend *b, vmm_queue *q) { INNER(b)->ops->queue_close(INNER(b), q); }
static int fault_queue_upload(vmm_backend *b, vmm_queue *q, unsigned slot, uintptr_t dst, const void *src, size_t size) {
    return fault_leave(fault_of(b), INNER(b)->ops->queue_upload(INNER(b), q, slot, dst, src, size));
}
static int fault_queue_download(vmm_backend *b, vmm_queue *q, unsigned slot, void *dst, uintptr_t src, size_t size) {
    return fault_leave(fault_of(b), INNER(b)->ops->queue_download(INNER(b), q, slot, dst, src, size));
}
static int fault_queue_wait(vmm_backend *b, vmm_queue *q, unsigned slot) {
    return fault_leave(fault_of(b), INNER(b)->ops->queue_wait(INNER(b), q, slot));
}
static int fault_register_read_only(vmm_backend *b, void *host, size_t size, uintptr_t *dev) {
    return fault_leave(fault_of(b), INNER(b)->ops->register_read_only(INNER(b), host, size, dev));
}
static int fault_unregister(vmm_backend *b, void *host) {
    return fault_leave(fault_of(b), INNER(b)->ops->unregister(INNER(b), host));
}
/* Optional in the contract: vmm_fault_open leaves them NULL where the inner
 * backend does. */
static int fault_direct_open(vmm_backend *b, int fd, vmm_direct **out) {
    return fault_leave(fault_of(b), INNER(b)->ops->direct_open(INNER(b), fd, out));
}
static int fault_direct_read(vmm_backend *b, vmm_direct *d, uint64_t offset, size_t size, uintptr_t dst) {
    return fault_leave(fault_of(b), INNER(b)->ops->direct_read(INNER(b), d, offset, size, dst));
}
static void fault_direct_close(vmm_backend *b, vmm_direct *d) { INNER(b)->ops->direct_close(INNER(b), d); }

/* Records what the inner backend still holds, then closes it and the wrapper. */
static void fault_close(vmm_backend *b) {
    fault_backend *fb = fault_of(b);
    if (fb->report) {
        vmm_host_counts_get(fb->inner, &fb->report->at_close);
        fb->report->closed = true;
    }
    fb->inner->ops->close(fb->inner);
    free(fb);
}

static const vmm_ops fault_ops = {
    .reserve = fault_reserve,
    .unreserve = fault_unreserve,
    .create = fault_create,
    .release = fault_release,
    .map = fault_map,
    .unmap = fault_unmap,
    .set_access = fault_set_access,
    .grant = fault_grant,
    .fence = fault_fence,
    .memset = fault_memset,
    .copy = fault_copy,
    .event_record = fault_event_record,
    .fence_record = fault_fence_record,
    .fence_order = fault_fence_order,
    .event_query = fault_event_query,
    .event_wait = fault_event_wait,
    .event_release = fault_event_release,
    .capturing = fault_capturing,
    .staging_alloc = fault_staging_alloc,
    .staging_free = fault_staging_free,
    .queue_open = fault_queue_open,
    .queue_close = fault_queue_close,
    .queue_upload = fault_queue_upload,
    .queue_download = fault_queue_download,
    .queue_wait = fault_queue_wait,
    .register_read_only = fault_register_read_only,
    .unregister = fault_unregister,
    .direct_open = fault_direct_open,
    .direct_read = fault_direct_read,
    .direct_close = fault_direct_close,
    .export_fd = fault_export_fd,
    .import_fd = fault_import_fd,
    .close = fault_close,
};

/* The ops as an array of slots, to compare tables whatever ops the contract grows. */
#define OPS_SLOTS (sizeof(vmm_ops) / sizeof(void (*)(void)))
_Static_assert(sizeof(vmm_ops) % sizeof(void (*)(void)) == 0, "vmm_ops holds function pointers only");

static bool is_fault_backend(const vmm_backend *b) { return b && b->ops && b->ops->close == fault_close; }

int vmm_fault_open(vmm_backend *inner, vmm_fault_report *report, vmm_backend **out) {
    if (!inner || !out) return vmm_fail(NULL, GPU_ERR_INVALID, "vmm_fault_open: inner and out are required");
    /* An op the inner backend offers but fault_ops does not forward would be a NULL
     * call in the heap: whoever grows vmm_ops forwards the new op above too. */
    void (*mine[OPS_SLOTS])(void), (*theirs[OPS_SLOTS])(void);
    memcpy(mine, &fault_ops, sizeof mine);
    memcpy(theirs, inner->ops, sizeof theirs);
    for (size_t i = 0; i < OPS_SLOTS; i++)
        if (theirs[i] && !mine[i])
            return vmm_fail(NULL, GPU_ERR_INVALID, "vmm_fault_open: backend op %zu of vmm_ops is not forwarded by fault/fault.c", i);
    fault_backend *fb = calloc(1, sizeof *fb);
    if (!fb) return vmm_fail(NULL, GPU_ERR_OUT_OF_MEMORY, "vmm_fault_open: no host memory for the wrapper");
    for (size_t i = 0; i < OPS_SLOTS; i++)
        if (!theirs[i]) mine[i] = NULL; /* optional ops stay absent */
    memcpy(&fb->ops, mine, sizeof fb->ops);
    fb->ops.close = fault_close;
    fb->base.ops = &fb->ops;
    fb->base.caps = inner->caps;
    fb->inner = inner;
    fb->report = report;
    atomic_store(&fb->only_op, -1);
    if (report) memset(report, 0, sizeof *report);
    *out = &fb->base;
    return GPU_OK;
}

void vmm_fault_arm(vmm_backend *b, uint64_t nth, bool persistent, int error) {
    if (!is_fault_backend(b)) return;
    fault_backend *fb = fault_of(b);
    atomic_store(&fb->fail_at, 0);
    atomic_store(&fb->only_op, -1);
    atomic_store(&fb->error, error);
    atomic_store(&fb->persistent, persistent);
    atomic_store(&fb->fail_at, nth ? atomic_load(&fb->calls) + nth : 0);
}

void vmm_fault_arm_op(vmm_backend *b, int op, uint64_t nth, int error) {
    if (!is_fault_backend(b) || op < 0 || op >= VMM_OP_COUNT) return;
    fault_backend *fb = fault_of(b);
    atomic_store(&fb->fail_at, 0);
    atomic_store(&fb->only_op, op);
    atomic_store(&fb->error, error);
    atomic_store(&fb->persistent, false);
    atomic_store(&fb->fail_at, nth ? atomic_load(&fb->op_calls[op]) + nth : 0);
}

void vmm_fault_hook(vmm_backend *b, void (*fn)(int op, void *arg), void *arg) {
    if (!is_fault_backend(b)) return;
    fault_of(b)->hook_arg = arg;
    fault_of(b)->hook = fn;
}

uint64_t vmm_fault_calls(vmm_backend *b) {
    return is_fault_backend(b) ? atomic_load(&fault_of(b)->calls) : 0;
}
