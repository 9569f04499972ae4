/*
 * test_ipc.c — blocks shared between processes (gpu_ipc_*), on the host
 * backend, between real processes: CI proves here, without a GPU, what the
 * CUDA backend does with exported fds.
 *
 * The parent allocates blocks of every kind (256 B to 64 MiB; small ones
 * sharing one extent, one spread over several extents, one GPU_ALLOC_OWNED),
 * writes a pattern into each and exports them; a child — this binary exec'd
 * afresh with --child, so that it has nothing but the handles' bytes — opens
 * each, checks the pattern, writes its own, closes; the parent checks the
 * child's bytes. Then the other way round. Around that: opening twice and
 * closing twice, every refusal (not a live block, a block freed since, forged
 * handles, what was never opened, an exporter that has exited), an exporter
 * that frees while the importer still maps the block, a failure at every
 * backend call of an import (undone without a trace), extents pinned while an
 * export is in flight, threads opening and closing at once. Every process counts its fds around its work (flat) and
 * checks its heap.
 */
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "child.h"
#include "util.h"

#include "api/api.h"
#include "backend/fault/fault.h"
#include "core/internal.h"
#include "ipc/ipc.h"
#include "ipc/share.h"

CHILD_TSAN_FORK_OK

/* ---- the blocks both processes make ------------------------------------------------ */

typedef struct spec {
    size_t size;
    unsigned flags;
    size_t grow_to; /* realloc'ed in steps of size up to this: a block over several extents */
} spec;
static const spec specs[] = {
    {256, 0, 0},           /* these three share one extent */
    {4 * KiB, 0, 0},
    {100 * KiB, 0, 0},
    {3 * MiB, 0, 0},       /* an extent of its own */
    {2 * MiB, GPU_ALLOC_OWNED, 0},
    {16 * MiB, 0, 64 * MiB}, /* grown in place: four extents */
};
#define NSPECS (sizeof specs / sizeof specs[0])
#define MAX_BLOCKS 8

/* The 8 bytes at offset o of block i written by writer (1: the first process, 2: the other). */
static uint64_t pattern(unsigned writer, unsigned i, size_t o) {
    uint64_t x = ((uint64_t)writer << 56) ^ ((uint64_t)i << 48) ^ o;
    x ^= x >> 29;
    x *= 0xbf58476d1ce4e5b9u;
    return x ^ (x >> 32);
}
static void fill(void *p, size_t size, unsigned writer, unsigned i) {
    uint64_t *w = p;
    for (size_t o = 0; o < size / 8; o++) w[o] = pattern(writer, i, o);
}
/* The first offset where p differs from the pattern, or SIZE_MAX. */
static size_t mismatch(const void *p, size_t size, unsigned writer, unsigned i) {
    const uint64_t *w = p;
    for (size_t o = 0; o < size / 8; o++)
        if (w[o] != pattern(writer, i, o)) return o * 8;
    return SIZE_MAX;
}

/* Allocates the blocks of specs in the default heap. */
static bool make_blocks(void **p) {
    for (unsigned i = 0; i < NSPECS; i++) {
        p[i] = gpu_malloc_flags(specs[i].size, specs[i].flags);
        for (size_t s = specs[i].size * 2; p[i] && s <= specs[i].grow_to; s += specs[i].size) {
            void *q = gpu_realloc(p[i], s);
            if (q != p[i]) return false; /* grown in place over its headroom */
        }
        if (!p[i]) return false;
    }
    return true;
}
static size_t spec_size(unsigned i) { return specs[i].grow_to ? specs[i].grow_to : specs[i].size; }

/* Extents behind [p, p+size) in the default heap. */
static unsigned extents_behind(const void *p, size_t size) {
    gpu_heap_t *h = gpu_heap_default();
    unsigned n = 0;
    heap_lock(h);
    for (uintptr_t va = (uintptr_t)p; va < (uintptr_t)p + size; n++) {
        extent *e = extmap_find(&h->extents, va);
        va = e->va + e->size;
    }
    heap_unlock(h);
    return n;
}
static const extent *extent_at(const void *p) {
    gpu_heap_t *h = gpu_heap_default();
    heap_lock(h);
    const extent *e = extmap_find(&h->extents, (uintptr_t)p);
    heap_unlock(h);
    return e;
}

/* ---- what a process can see of itself ------------------------------------------------ */

static vmm_host_counts host_counts(void);

/* Open fds of this process, less the memfds behind the default heap's
 * extents (one per host-backend handle, imported ones included: an import
 * must leave none behind) and the connections kept for the next request (the
 * importer's end, and this process's server's when it imports from itself). */
static int fd_count(void) {
    return open_fd_count() - (int)(host_counts().handles - host_counts().imported_handles) -
           (int)ipc_client_kept() - (int)ipc_server_connections();
}

/* The inode of the file mapped at p (a memfd), 0 if none. */
static unsigned long inode_at(const void *p) {
    FILE *f = fopen("/proc/self/maps", "r");
    unsigned long lo, hi, ino = 0, found = 0;
    char line[512];
    while (f && !found && fgets(line, sizeof line, f))
        if (sscanf(line, "%lx-%lx %*s %*s %*s %lu", &lo, &hi, &ino) == 3 && lo <= (uintptr_t)p && (uintptr_t)p < hi)
            found = ino;
    if (f) fclose(f);
    return found;
}
/* True when some mapping of this process maps the file of that inode. */
static bool inode_mapped(unsigned long ino) {
    FILE *f = fopen("/proc/self/maps", "r");
    unsigned long x;
    char line[512];
    bool found = false;
    while (f && !found && fgets(line, sizeof line, f)) found = sscanf(line, "%*s %*s %*s %*s %lu", &x) == 1 && x == ino;
    if (f) fclose(f);
    return found;
}

static vmm_host_counts host_counts(void) {
    vmm_host_counts c;
    vmm_host_counts_get(gpu_heap_default()->door.b, &c);
    return c;
}
static gpu_stats_t stats(void) {
    gpu_stats_t s;
    gpu_heap_stats(NULL, &s);
    return s;
}
static bool heap_ok(char *msg, size_t len) { return gpu_heap_check(NULL, msg, len) == GPU_OK; }

/* The message of the calling thread's last failure. */
static _Thread_local char reported[512];
static void keep_message(int err, const char *message, void *arg) {
    (void)err, (void)arg;
    snprintf(reported, sizeof reported, "%s", message);
}

/* ---- children: this binary exec'd with --child MODE (no cmocka there) ------------------ */

/* Says what failed, in which process; evaluates to 1, a child's exit status. */
#define CHILD_FAIL(...) \
    (fprintf(stderr, "child %d: ", (int)getpid()), fprintf(stderr, __VA_ARGS__), fputc('\n', stderr), 1)

static void to_hex(const gpu_ipc_mem_handle_t *h, char *hex) {
    for (unsigned i = 0; i < sizeof h->bytes; i++) sprintf(hex + 2 * i, "%02x", h->bytes[i]);
}
static bool from_hex(const char *hex, gpu_ipc_mem_handle_t *h) {
    if (strlen(hex) != 2 * sizeof h->bytes) return false;
    for (unsigned i = 0; i < sizeof h->bytes; i++) {
        unsigned v;
        if (sscanf(hex + 2 * i, "%2x", &v) != 1) return false;
        h->bytes[i] = (unsigned char)v;
    }
    return true;
}

/* import: opens each handle, checks the first process's pattern, writes its
 * own, closes; fds flat, heap sound, nothing left open. */
static int child_import(int n, char **hex) {
    if (!gpu_heap_default()) return CHILD_FAIL("no default heap");
    int fds = fd_count(), bad = 0;
    for (int i = 0; i < n && !bad; i++) {
        gpu_ipc_mem_handle_t h;
        void *p = NULL;
        if (!from_hex(hex[i], &h)) return CHILD_FAIL("bad hex");
        int rc = gpu_ipc_open_mem_handle(&p, h, i % 2); /* the lazy-peer flag is accepted */
        if (rc != GPU_OK) return CHILD_FAIL("open %d: %s: %s", i, gpu_strerror(rc), reported);
        size_t at = mismatch(p, spec_size(i), 1, i);
        if (at != SIZE_MAX) bad = CHILD_FAIL("block %d: the exporter's byte %zu differs", i, at);
        fill(p, spec_size(i), 2, i);
        if (gpu_ipc_close_mem_handle(p) != GPU_OK) bad = CHILD_FAIL("close %d: %s", i, reported);
    }
    char msg[256];
    if (!bad && fd_count() != fds) bad = CHILD_FAIL("%d fds after, %d before", fd_count(), fds);
    if (!bad && !heap_ok(msg, sizeof msg)) bad = CHILD_FAIL("heap check: %s", msg);
    if (!bad && (stats().ipc_imports_open || host_counts().imported_handles || host_counts().mappings))
        bad = CHILD_FAIL("imports left: %llu open, %zu handles, %zu mappings", (unsigned long long)stats().ipc_imports_open,
                         host_counts().imported_handles, host_counts().mappings);
    return bad;
}

/* export: makes and exports the blocks, writes the handles to fd w, waits for
 * a byte on fd r, then checks the other process's pattern in every block. */
static int child_export(int w, int r) {
    void *p[MAX_BLOCKS];
    if (!make_blocks(p)) return CHILD_FAIL("make_blocks");
    for (unsigned i = 0; i < NSPECS; i++) {
        fill(p[i], spec_size(i), 1, i);
        gpu_ipc_mem_handle_t h;
        if (gpu_ipc_get_mem_handle(&h, p[i]) != GPU_OK) return CHILD_FAIL("export %u: %s", i, reported);
        if (write(w, &h, sizeof h) != (ssize_t)sizeof h) return CHILD_FAIL("write: %s", strerror(errno));
    }
    char go;
    if (read(r, &go, 1) != 1) return CHILD_FAIL("the parent did not say go");
    for (unsigned i = 0; i < NSPECS; i++) {
        size_t at = mismatch(p[i], spec_size(i), 2, i);
        if (at != SIZE_MAX) return CHILD_FAIL("block %u: the importer's byte %zu differs", i, at);
        if (gpu_free(p[i]) != GPU_OK) return CHILD_FAIL("free %u", i);
    }
    char msg[256];
    return heap_ok(msg, sizeof msg) ? 0 : CHILD_FAIL("heap check: %s", msg);
}

/* export-exit: exports one block, writes its handle to fd w and exits. */
static int child_export_exit(int w) {
    void *p = gpu_malloc(4096);
    gpu_ipc_mem_handle_t h;
    if (!p || gpu_ipc_get_mem_handle(&h, p) != GPU_OK) return CHILD_FAIL("export: %s", reported);
    return write(w, &h, sizeof h) == (ssize_t)sizeof h ? 0 : CHILD_FAIL("write");
}

/* hold: opens the handle, checks it, says so on w, waits on r while the
 * exporter frees the block and gives its memory back, checks the bytes again,
 * closes: then nothing of the memory is mapped here either. */
static int child_hold(const char *hex, int w, int r) {
    gpu_ipc_mem_handle_t h;
    void *p = NULL;
    if (!from_hex(hex, &h) || gpu_ipc_open_mem_handle(&p, h, 0) != GPU_OK) return CHILD_FAIL("open: %s", reported);
    unsigned long ino = inode_at(p);
    if (!ino || mismatch(p, 4 * MiB, 1, 7) != SIZE_MAX) return CHILD_FAIL("bytes before the free");
    char go = 'o';
    if (write(w, &go, 1) != 1 || read(r, &go, 1) != 1) return CHILD_FAIL("pipe");
    if (mismatch(p, 4 * MiB, 1, 7) != SIZE_MAX) return CHILD_FAIL("bytes after the exporter let go");
    fill(p, 4 * MiB, 2, 7); /* still writable: the memory is this process's as much */
    if (host_counts().imported_bytes < 4 * MiB) return CHILD_FAIL("imported bytes %zu", host_counts().imported_bytes);
    if (gpu_ipc_close_mem_handle(p) != GPU_OK) return CHILD_FAIL("close: %s", reported);
    if (inode_mapped(ino)) return CHILD_FAIL("the memory is still mapped after the close");
    if (host_counts().imported_bytes) return CHILD_FAIL("imported bytes after the close");
    char msg[256];
    return heap_ok(msg, sizeof msg) ? 0 : CHILD_FAIL("heap check: %s", msg);
}

static int child_main(int argc, char **argv) {
    gpu_set_error_handler(keep_message, NULL);
    const char *mode = argv[2];
    if (!strcmp(mode, "import")) return child_import(argc - 3, argv + 3);
    if (!strcmp(mode, "export") && argc == 5) return child_export(atoi(argv[3]), atoi(argv[4]));
    if (!strcmp(mode, "export-exit") && argc == 4) return child_export_exit(atoi(argv[3]));
    if (!strcmp(mode, "hold") && argc == 6) return child_hold(argv[3], atoi(argv[4]), atoi(argv[5]));
    return CHILD_FAIL("unknown mode %s", mode);
}

/* Starts this binary as a child with args (NULL-terminated); fds keep[] stay
 * open in it (the pipes' ends; every other fd of ours is close-on-exec). */
static pid_t spawn(const char *const *args, const int *close_in_child, int nclose) {
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        for (int i = 0; i < nclose; i++) close(close_in_child[i]);
        char *argv[16 + MAX_BLOCKS] = {"test_ipc", "--child"};
        int n = 2;
        for (; args[n - 2]; n++) argv[n] = (char *)args[n - 2];
        argv[n] = NULL;
        execv("/proc/self/exe", argv);
        _exit(CHILD_FAIL("exec: %s", strerror(errno)));
    }
    return pid;
}
/* A child running `mode [arg] W R` with a pipe each way: *from reads what it
 * writes to W, *to writes what it reads from R. The child's ends are closed here. */
static pid_t spawn_piped(const char *mode, const char *arg, int *from, int *to) {
    int up[2], down[2];
    assert_int_equal(pipe(up), 0);
    assert_int_equal(pipe(down), 0);
    char w[16], r[16];
    snprintf(w, sizeof w, "%d", up[1]);
    snprintf(r, sizeof r, "%d", down[0]);
    const char *args[5] = {mode};
    int n = 1;
    if (arg) args[n++] = arg;
    args[n++] = w, args[n++] = r, args[n] = NULL;
    int close_in_child[] = {up[0], down[1]};
    pid_t pid = spawn(args, close_in_child, 2);
    close(up[1]), close(down[0]);
    *from = up[0], *to = down[1];
    return pid;
}

static int wait_child(pid_t pid) {
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) != pid) return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* ---- setup: fds flat and the heap sound around every test ----------------------------- */

static int fds_at_start;
static int setup(void **state) {
    (void)state;
    gpu_set_error_handler(keep_message, NULL);
    ipc_server_stop();
    ipc_client_disconnect();
    fds_at_start = fd_count();
    return 0;
}
static int teardown(void **state) {
    (void)state;
    ipc_server_stop(); /* its socket, wake fd and connections */
    ipc_client_disconnect();
    char msg[256];
    if (!heap_ok(msg, sizeof msg)) {
        print_error("heap check: %s\n", msg);
        return -1;
    }
    if (fd_count() != fds_at_start) {
        print_error("this process has %d fds after the test, %d before\n", fd_count(), fds_at_start);
        return -1;
    }
    if (stats().ipc_imports_open || host_counts().imported_handles) {
        print_error("imports left open\n");
        return -1;
    }
    return 0;
}

/* ---- the tests ------------------------------------------------------------------------- */

static void test_blocks_to_a_child(void **state) {
    (void)state;
    void *p[MAX_BLOCKS];
    assert_true(make_blocks(p));
    /* The shapes the test means: three blocks in one extent (two not at its
     * start), one over four extents. */
    assert_ptr_equal(extent_at(p[0]), extent_at(p[1]));
    assert_ptr_equal(extent_at(p[0]), extent_at(p[2]));
    assert_int_equal(extents_behind(p[5], spec_size(5)), 4);
    uint64_t exports = stats().ipc_exports;
    char hex[NSPECS][2 * 64 + 1];
    const char *args[NSPECS + 2] = {"import"};
    for (unsigned i = 0; i < NSPECS; i++) {
        fill(p[i], spec_size(i), 1, i);
        gpu_ipc_mem_handle_t h, again;
        assert_int_equal(gpu_ipc_get_mem_handle(&h, p[i]), GPU_OK);
        assert_int_equal(gpu_ipc_get_mem_handle(&again, p[i]), GPU_OK);
        assert_memory_equal(&h, &again, sizeof h); /* one live block, one handle */
        assert_true(gh_ipc_handle_is_ours(h.bytes));
        to_hex(&h, hex[i]);
        args[i + 1] = hex[i];
    }
    assert_int_equal(stats().ipc_exports - exports, NSPECS);
    assert_int_equal(wait_child(spawn(args, NULL, 0)), 0);
    for (unsigned i = 0; i < NSPECS; i++) {
        assert_int_equal(mismatch(p[i], spec_size(i), 2, i), SIZE_MAX); /* the child's bytes */
        assert_int_equal(gpu_free(p[i]), GPU_OK);
    }
}

static void test_blocks_from_a_child(void **state) {
    (void)state;
    int from, to;
    pid_t pid = spawn_piped("export", NULL, &from, &to);
    for (unsigned i = 0; i < NSPECS; i++) {
        gpu_ipc_mem_handle_t h;
        assert_int_equal(read(from, &h, sizeof h), (ssize_t)sizeof h);
        void *p = NULL;
        assert_int_equal(gpu_ipc_open_mem_handle(&p, h, 0), GPU_OK);
        assert_int_equal(mismatch(p, spec_size(i), 1, i), SIZE_MAX);
        fill(p, spec_size(i), 2, i);
        uintptr_t start;
        size_t size;
        assert_int_equal(gh_ipc_range((uintptr_t)p + spec_size(i) - 1, &start, &size), GPU_OK);
        assert_true(start == (uintptr_t)p && size >= spec_size(i));
        assert_int_equal(gpu_ipc_close_mem_handle(p), GPU_OK);
    }
    assert_int_equal(write(to, "g", 1), 1);
    close(from), close(to);
    assert_int_equal(wait_child(pid), 0);
}

/* This process's own handle, opened twice: one mapping at a second address. */
static void test_open_twice_close_twice(void **state) {
    (void)state;
    char *p = gpu_malloc(4 * KiB);
    assert_non_null(p);
    fill(p, 4 * KiB, 1, 0);
    gpu_ipc_mem_handle_t h;
    assert_int_equal(gpu_ipc_get_mem_handle(&h, p), GPU_OK);
    char *a = NULL, *b = NULL;
    assert_int_equal(gpu_ipc_open_mem_handle((void **)&a, h, 0), GPU_OK);
    assert_int_equal(gpu_ipc_open_mem_handle((void **)&b, h, 1), GPU_OK);
    assert_ptr_equal(a, b);
    assert_ptr_not_equal(a, p);
    assert_int_equal(stats().ipc_imports_open, 1);
    assert_int_equal(mismatch(a, 4 * KiB, 1, 0), SIZE_MAX);
    a[100] = 42; /* one memory, two addresses */
    assert_int_equal(p[100], 42);

    uintptr_t start;
    size_t size;
    assert_int_equal(gh_ipc_range((uintptr_t)a + 123, &start, &size), GPU_OK);
    assert_ptr_equal((void *)start, a);
    assert_int_equal(size, gpu_malloc_usable_size(p));
    assert_int_equal(gh_ipc_range((uintptr_t)p, &start, &size), GPU_ERR_NOT_OWNED); /* a heap block */
    /* Not a heap block: the heap's calls refuse it. */
    assert_int_equal(gpu_free(a), GPU_ERR_NOT_OWNED);
    assert_null(gpu_realloc(a, 8 * KiB));
    assert_int_equal(gpu_last_error(), GPU_ERR_NOT_OWNED);
    assert_int_equal(gpu_protect(a, 4 * KiB, GPU_PROT_READ), GPU_ERR_NOT_OWNED);
    gpu_ipc_mem_handle_t x;
    assert_int_equal(gpu_ipc_get_mem_handle(&x, a), GPU_ERR_NOT_OWNED);
    assert_non_null(strstr(reported, "imported"));
    assert_int_equal(gpu_ipc_close_mem_handle(a + 256), GPU_ERR_INVALID); /* inside, not the start */
    assert_non_null(strstr(reported, "inside an imported block"));

    assert_int_equal(gpu_ipc_close_mem_handle(a), GPU_OK);
    assert_int_equal(stats().ipc_imports_open, 1);
    gpu_capture_begin(); /* the last close syncs the device, which would break a capture */
    assert_int_equal(gpu_ipc_close_mem_handle(b), GPU_ERR_CAPTURING);
    gpu_capture_end();
    assert_int_equal(stats().ipc_imports_open, 1);
    assert_int_equal(gh_ipc_range((uintptr_t)b, &start, &size), GPU_OK); /* still open */
    assert_int_equal(gpu_ipc_close_mem_handle(b), GPU_OK);
    assert_int_equal(stats().ipc_imports_open, 0);
    assert_int_equal(gh_ipc_range((uintptr_t)a, &start, &size), GPU_ERR_NOT_OWNED);
    assert_int_equal(gpu_ipc_close_mem_handle(a), GPU_ERR_INVALID);
    assert_non_null(strstr(reported, "not an open import"));
    assert_int_equal(host_counts().imported_handles, 0);
    assert_int_equal(gpu_free(p), GPU_OK);
}

static void test_exports_refused(void **state) {
    (void)state;
    gpu_ipc_mem_handle_t h;
    char *p = gpu_malloc(64 * KiB);
    assert_non_null(p);
    assert_int_equal(gpu_ipc_get_mem_handle(NULL, p), GPU_ERR_INVALID);
    assert_int_equal(gpu_ipc_get_mem_handle(&h, NULL), GPU_ERR_INVALID);
    assert_int_equal(gpu_ipc_get_mem_handle(&h, &h), GPU_ERR_NOT_OWNED); /* host memory */
    assert_int_equal(gpu_ipc_get_mem_handle(&h, p + 256), GPU_ERR_NOT_LIVE); /* interior */
    void *r = gpu_reserve(4 * MiB);
    assert_non_null(r);
    assert_int_equal(gpu_ipc_get_mem_handle(&h, r), GPU_ERR_INVALID);
    assert_non_null(strstr(reported, "gpu_reserve"));
    assert_int_equal(gpu_release(r), GPU_OK);
    assert_int_equal(gpu_free(p), GPU_OK);
    assert_int_equal(gpu_ipc_get_mem_handle(&h, p), GPU_ERR_NOT_LIVE); /* freed */

    /* A heap opened with ipc = 0 (GPUHEAP_IPC=0) makes plain memory: refused. */
    gpu_config_t cfg = host_config(1 * GiB, 0, 0);
    cfg.ipc = 0;
    gpu_heap_t *plain;
    assert_int_equal(gpu_heap_create(&cfg, &plain), GPU_OK);
    void *q = gpu_heap_malloc(plain, 4096);
    assert_int_equal(gpu_ipc_get_mem_handle(&h, q), GPU_ERR_INVALID);
    assert_non_null(strstr(reported, "GPUHEAP_IPC=0"));
    assert_int_equal(gpu_heap_destroy(plain), GPU_OK);
    setenv("GPUHEAP_IPC", "0", 1);
    assert_int_equal(gpu_config_init(&cfg), GPU_OK);
    assert_int_equal(cfg.ipc, 0);
    setenv("GPUHEAP_IPC", "yes", 1);
    assert_int_equal(gpu_config_init(&cfg), GPU_ERR_INVALID);
    assert_int_equal(cfg.ipc, 1);
    unsetenv("GPUHEAP_IPC");
}

/* Opens h expecting err with words in the message; nothing is left open. */
static void expect_refused(gpu_ipc_mem_handle_t h, int err, const char *words) {
    void *p = (void *)1;
    int fds = fd_count();
    assert_int_equal(gpu_ipc_open_mem_handle(&p, h, 0), err);
    if (!strstr(reported, words)) fail_msg("\"%s\" not in \"%s\"", words, reported);
    assert_ptr_equal(p, (void *)1); /* untouched */
    /* This process's own server closes its end of a connection it refused
     * after it answers, maybe after the answer arrived here: give it a moment. */
    for (int i = 0; i < 200 && fd_count() != fds; i++) usleep(10000);
    assert_int_equal(fd_count(), fds);
}

/* A handle of a freed block is refused by the exporter, whatever now lies at
 * its address, and no fd is sent. */
static void test_freed_block_never_served(void **state) {
    (void)state;
    for (size_t size = 256; size <= 4 * MiB; size *= 128) {
        void *p = gpu_malloc(size); /* 256 B: from the thread cache, taken out of it by the export */
        gpu_ipc_mem_handle_t h;
        assert_int_equal(gpu_ipc_get_mem_handle(&h, p), GPU_OK);
        assert_int_equal(gpu_free(p), GPU_OK);
        ipc_server_counts before, after;
        ipc_server_get_counts(&before);
        expect_refused(h, GPU_ERR_INVALID, "freed");
        /* The same address live again, as a new block: still refused. */
        assert_int_equal(gpu_heap_trim(NULL, SIZE_MAX), GPU_OK); /* the quarantine, idle again */
        void *q = gpu_malloc(size);
        if (q == p) expect_refused(h, GPU_ERR_INVALID, "freed");
        gpu_ipc_mem_handle_t h2;
        assert_int_equal(gpu_ipc_get_mem_handle(&h2, q), GPU_OK);
        assert_memory_not_equal(&h, &h2, sizeof h); /* a new life, a new token */
        ipc_server_stop(); /* counts settle */
        ipc_server_get_counts(&after);
        assert_int_equal(after.served, before.served);
        assert_true(after.refused_lookup > before.refused_lookup);
        assert_int_equal(gpu_free(q), GPU_OK);
    }
}

static void test_forged_handles(void **state) {
    (void)state;
    void *p = gpu_malloc(4096);
    gpu_ipc_mem_handle_t h, x;
    assert_int_equal(gpu_ipc_get_mem_handle(&h, p), GPU_OK);
    for (int i = 0; i < 16; i++) { /* random bytes */
        assert_int_equal(getrandom(x.bytes, sizeof x.bytes, 0), (ssize_t)sizeof x.bytes);
        assert_false(gh_ipc_handle_is_ours(x.bytes));
        expect_refused(x, GPU_ERR_INVALID, "checksum");
    }
    ipc_handle_fields f;
    assert_int_equal(ipc_handle_decode(h.bytes, &f), GPU_OK);
    ipc_handle_fields g = f;
    g.export_token ^= 1; /* valid-looking, another token */
    ipc_handle_encode(&g, x.bytes);
    assert_true(gh_ipc_handle_is_ours(x.bytes));
    expect_refused(x, GPU_ERR_INVALID, "no block of this process was exported with that token");
    g = f;
    g.uid += 1; /* another user's */
    ipc_handle_encode(&g, x.bytes);
    expect_refused(x, GPU_ERR_INVALID, "uid");
    g = f;
    g.size += 256; /* the exporter's block has another size */
    ipc_handle_encode(&g, x.bytes);
    expect_refused(x, GPU_ERR_INVALID, "the handle says");
    void *q;
    assert_int_equal(gpu_ipc_open_mem_handle(&q, h, 2), GPU_ERR_INVALID); /* flags */
    assert_int_equal(gpu_ipc_open_mem_handle(NULL, h, 0), GPU_ERR_INVALID);
    assert_int_equal(gpu_free(p), GPU_OK);
}

static void test_close_what_was_not_opened(void **state) {
    (void)state;
    void *p = gpu_malloc(4096);
    assert_int_equal(gpu_ipc_close_mem_handle(p), GPU_ERR_INVALID);
    assert_non_null(strstr(reported, "not an open import"));
    assert_int_equal(gpu_ipc_close_mem_handle(&p), GPU_ERR_INVALID);
    assert_int_equal(gpu_ipc_close_mem_handle(NULL), GPU_ERR_INVALID);
    assert_int_equal(gpu_free(p), GPU_OK);
}

static void test_exporter_exited(void **state) {
    (void)state;
    int up[2];
    assert_int_equal(pipe(up), 0);
    char w[16];
    snprintf(w, sizeof w, "%d", up[1]);
    const char *args[] = {"export-exit", w, NULL};
    pid_t pid = spawn(args, &up[0], 1);
    close(up[1]);
    gpu_ipc_mem_handle_t h;
    assert_int_equal(read(up[0], &h, sizeof h), (ssize_t)sizeof h);
    close(up[0]);
    assert_int_equal(wait_child(pid), 0);
    char words[64];
    snprintf(words, sizeof words, "(pid %d) is gone", (int)pid);
    expect_refused(h, GPU_ERR_INVALID, words);
}

/* The exporter frees a block and gives its memory back while the importer
 * still maps it: the importer's bytes stay, and the memory goes only when the
 * importer closes too. */
static void test_exporter_frees_while_open(void **state) {
    (void)state;
    void *p = gpu_malloc_flags(4 * MiB, GPU_ALLOC_OWNED);
    assert_non_null(p);
    fill(p, 4 * MiB, 1, 7);
    unsigned long ino = inode_at(p);
    assert_true(ino != 0);
    gpu_ipc_mem_handle_t h;
    assert_int_equal(gpu_ipc_get_mem_handle(&h, p), GPU_OK);
    char hex[2 * 64 + 1];
    to_hex(&h, hex);
    int from, to;
    pid_t pid = spawn_piped("hold", hex, &from, &to);
    char c;
    assert_int_equal(read(from, &c, 1), 1); /* the child has it open */
    size_t physical = host_counts().physical_bytes;
    assert_int_equal(gpu_free(p), GPU_OK);
    assert_int_equal(gpu_heap_trim(NULL, 0), GPU_OK);
    assert_true(host_counts().physical_bytes <= physical - 4 * MiB); /* gone from this process */
    assert_false(inode_mapped(ino));
    assert_int_equal(write(to, "g", 1), 1);
    close(from), close(to);
    assert_int_equal(wait_child(pid), 0);
}

/* A refusal at every backend call of an import is undone: no handle, mapping,
 * reservation or fd left, and the next try works. */
static void test_import_failures_undone(void **state) {
    (void)state;
    void *p[MAX_BLOCKS];
    assert_true(make_blocks(p));
    gpu_ipc_mem_handle_t h;
    fill(p[5], spec_size(5), 1, 5);
    assert_int_equal(extents_behind(p[5], spec_size(5)), 4);
    gpu_config_t cfg = host_config(1 * GiB, 0, 0);
    vmm_backend *inner, *outer;
    gpu_heap_t *fh;
    assert_int_equal(vmm_host_open(&cfg, &inner), GPU_OK);
    assert_int_equal(vmm_fault_open(inner, NULL, &outer), GPU_OK);
    assert_int_equal(gh_heap_create_on(&cfg, outer, &fh), GPU_OK);
    vmm_host_counts before, now;
    vmm_host_counts_get(inner, &before);
    int fds = fd_count();
    unsigned failed = 0;
    for (uint64_t k = 1;; k++) {
        /* This process's own server closes its copies of the fds after it
         * sends them, maybe after the import returns: it is stopped before fds
         * are counted, and each try asks a new one. */
        assert_int_equal(gpu_ipc_get_mem_handle(&h, p[5]), GPU_OK);
        vmm_fault_arm(outer, k, false, 0);
        void *q = NULL;
        int rc = ipc_import_open(fh, h.bytes, &q);
        vmm_fault_arm(outer, 0, false, 0);
        ipc_server_stop();
        if (rc == GPU_OK) {
            assert_int_equal(mismatch(q, spec_size(5), 1, 5), SIZE_MAX);
            assert_int_equal(ipc_import_close(q), GPU_OK);
            break;
        }
        failed++;
        vmm_host_counts_get(inner, &now);
        assert_int_equal(now.handles, before.handles);
        assert_int_equal(now.mappings, before.mappings);
        assert_int_equal(now.reservations, before.reservations);
        assert_int_equal(fd_count(), fds);
        assert_int_equal(atomic_load(&fh->ipc_imports_open), 0);
    }
    assert_int_equal(failed, 1 + 4 + 4 + 1); /* reserve, import and map each extent, access */
    vmm_host_counts_get(inner, &now);
    assert_int_equal(now.imported_handles, 0);
    assert_int_equal(gpu_heap_destroy(fh), GPU_OK);
    for (unsigned i = 0; i < NSPECS; i++) assert_int_equal(gpu_free(p[i]), GPU_OK);
}

/* White-box: the extents of an export in flight stay while the block is freed
 * and the heap trimmed, and the export then refuses to hand them out. */
static void test_pinned_while_exporting(void **state) {
    (void)state;
    gpu_heap_t *h = gpu_heap_default();
    void *p = gpu_malloc_flags(2 * MiB, GPU_ALLOC_OWNED);
    uint64_t fresh, token;
    size_t size;
    assert_int_equal(ipc_random64(&fresh), GPU_OK);
    assert_int_equal(heap_export_token(h, p, fresh, &token, &size), GPU_OK);
    assert_true(token == fresh && size >= 2 * MiB);
    heap_export_extent ext[8];
    heap_export x = {.start = (uintptr_t)p, .token = token, .ext = ext, .max = 8};
    assert_int_equal(heap_export_begin(h, &x), GPU_OK);
    assert_true(x.n >= 1 && x.offset == 0 && x.size == size && ext[0].e->pins == 1);
    assert_int_equal(gpu_free(p), GPU_OK);
    assert_int_equal(gpu_heap_trim(NULL, 0), GPU_OK);
    assert_ptr_equal(extent_at(p), ext[0].e); /* pinned: not given back */
    assert_int_equal(heap_export_end(h, &x), GPU_ERR_INVALID); /* freed meanwhile: nothing handed out */
    assert_int_equal(gpu_heap_trim(NULL, 0), GPU_OK);
    assert_null(extent_at(p));
    assert_false(heap_export_live(h, (uintptr_t)p, token));
}

/* The handle behind p in heap h. */
static vmm_handle handle_at(gpu_heap_t *h, const void *p) {
    heap_lock(h);
    const extent *e = extmap_find(&h->extents, (uintptr_t)p);
    vmm_handle handle = e ? e->handle : 0;
    heap_unlock(h);
    return handle;
}
static unsigned long inode_of(int fd) {
    struct stat st;
    return fstat(fd, &st) == 0 ? (unsigned long)st.st_ino : 0;
}

/* A backend whose exports are worth keeping (caps.cache_exports: CUDA's) gets
 * one backend export per handle: later ones are dups of the fd the door keeps,
 * which is closed before the handle is released, so a handle number given out
 * again never serves the memory it named before; at most VMM_EXPORT_CACHE are
 * kept. The host backend plays CUDA's part here. */
static void test_export_fds_kept(void **state) {
    (void)state;
    gpu_config_t cfg = host_config(4 * GiB, 0, 0);
    vmm_backend *b;
    gpu_heap_t *eh;
    assert_int_equal(vmm_host_open(&cfg, &b), GPU_OK);
    b->caps.cache_exports = true;
    assert_int_equal(gh_heap_create_on(&cfg, b, &eh), GPU_OK);
    _Atomic uint64_t *exports = &eh->door.counts.calls[VMM_OP_EXPORT];

    /* Two opens of one block (closed between): one backend export. */
    char *p = gpu_heap_malloc_flags(eh, 2 * MiB, GPU_ALLOC_OWNED);
    assert_non_null(p);
    fill(p, 2 * MiB, 1, 3);
    gpu_ipc_mem_handle_t h;
    assert_int_equal(gpu_ipc_get_mem_handle(&h, p), GPU_OK);
    for (int i = 0; i < 2; i++) {
        void *q = NULL;
        assert_int_equal(gpu_ipc_open_mem_handle(&q, h, 0), GPU_OK);
        assert_int_equal(mismatch(q, 2 * MiB, 1, 3), SIZE_MAX);
        assert_int_equal(gpu_ipc_close_mem_handle(q), GPU_OK);
    }
    assert_int_equal(*exports, 1);
    assert_int_equal(vmm_call_exports_kept(&eh->door), 1);

    /* The same memory in every fd; gone from the door with the handle. */
    vmm_handle handle = handle_at(eh, p);
    int a, c;
    assert_int_equal(vmm_call_export_fd(&eh->door, handle, &a), GPU_OK);
    assert_int_equal(vmm_call_export_fd(&eh->door, handle, &c), GPU_OK);
    assert_int_equal(*exports, 1);
    assert_true(a != c && inode_of(a) && inode_of(a) == inode_of(c));
    unsigned long old = inode_of(a);
    close(a), close(c);
    assert_int_equal(gpu_heap_free(eh, p), GPU_OK);
    assert_int_equal(gpu_heap_trim(eh, 0), GPU_OK);
    assert_int_equal(vmm_call_exports_kept(&eh->door), 0);
    p = gpu_heap_malloc_flags(eh, 2 * MiB, GPU_ALLOC_OWNED);
    assert_int_equal(handle_at(eh, p), handle); /* the host backend gives the number out again */
    assert_int_equal(vmm_call_export_fd(&eh->door, handle, &a), GPU_OK);
    assert_int_equal(*exports, 2);
    assert_true(inode_of(a) != old); /* the new memory's, never the old */
    close(a);
    assert_int_equal(gpu_heap_free(eh, p), GPU_OK);
    assert_int_equal(gpu_heap_trim(eh, 0), GPU_OK);
    assert_int_equal(vmm_call_exports_kept(&eh->door), 0);

    /* A bounded number kept: a new one closes the oldest. */
    enum { N = VMM_EXPORT_CACHE + 4 };
    static void *many[N];
    for (unsigned i = 0; i < N; i++) {
        many[i] = gpu_heap_malloc_flags(eh, 2 * MiB, GPU_ALLOC_OWNED);
        assert_non_null(many[i]);
        assert_int_equal(vmm_call_export_fd(&eh->door, handle_at(eh, many[i]), &a), GPU_OK);
        close(a);
        assert_int_equal(vmm_call_exports_kept(&eh->door), i < VMM_EXPORT_CACHE ? i + 1 : VMM_EXPORT_CACHE);
    }
    assert_int_equal(vmm_call_export_fd(&eh->door, handle_at(eh, many[0]), &a), GPU_OK); /* closed: exported again */
    close(a);
    assert_int_equal(*exports, 2 + N + 1);
    assert_int_equal(vmm_call_export_fd(&eh->door, handle_at(eh, many[N - 1]), &a), GPU_OK); /* kept */
    close(a);
    assert_int_equal(*exports, 2 + N + 1);
    /* The heap goes with fds kept: the door closes them (teardown counts fds). */
    assert_int_equal(gpu_heap_destroy(eh), GPU_OK);
}

/* Threads open and close one handle, ask for ranges, export and free blocks,
 * all at once. */
#define RACE_THREADS 4
#define RACE_ITERS 60
static gpu_ipc_mem_handle_t race_handle;
static void *race(void *arg) {
    uintptr_t id = (uintptr_t)arg;
    for (unsigned i = 0; i < RACE_ITERS; i++) {
        void *q = NULL;
        if (gpu_ipc_open_mem_handle(&q, race_handle, 0) != GPU_OK) return (void *)1;
        uintptr_t start;
        size_t size;
        if (gh_ipc_range((uintptr_t)q, &start, &size) != GPU_OK || start != (uintptr_t)q) return (void *)2;
        if (((volatile char *)q)[id] != (char)id) return (void *)3;
        if (gpu_ipc_close_mem_handle(q) != GPU_OK) return (void *)4;
        void *b = gpu_malloc(256 * (i % 8 + 1));
        gpu_ipc_mem_handle_t x;
        if (!b || gpu_ipc_get_mem_handle(&x, b) != GPU_OK || gpu_free(b) != GPU_OK) return (void *)5;
    }
    return NULL;
}
static void test_threads(void **state) {
    (void)state;
    char *p = gpu_malloc(64 * KiB);
    for (int i = 0; i < RACE_THREADS; i++) p[i] = (char)i;
    assert_int_equal(gpu_ipc_get_mem_handle(&race_handle, p), GPU_OK);
    pthread_t t[RACE_THREADS];
    for (uintptr_t i = 0; i < RACE_THREADS; i++) assert_int_equal(pthread_create(&t[i], NULL, race, (void *)i), 0);
    for (int i = 0; i < RACE_THREADS; i++) {
        void *rc;
        assert_int_equal(pthread_join(t[i], &rc), 0);
        assert_null(rc);
    }
    assert_int_equal(gpu_free(p), GPU_OK);
}

int main(int argc, char **argv) {
    setenv("GPUHEAP_BACKEND", "host", 1); /* the default heaps, here and in the children */
    unsetenv("GPUHEAP_IPC");
    if (argc >= 3 && !strcmp(argv[1], "--child")) return child_main(argc, argv);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_blocks_to_a_child, setup, teardown),
        cmocka_unit_test_setup_teardown(test_blocks_from_a_child, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_twice_close_twice, setup, teardown),
        cmocka_unit_test_setup_teardown(test_exports_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_freed_block_never_served, setup, teardown),
        cmocka_unit_test_setup_teardown(test_forged_handles, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_what_was_not_opened, setup, teardown),
        cmocka_unit_test_setup_teardown(test_exporter_exited, setup, teardown),
        cmocka_unit_test_setup_teardown(test_exporter_frees_while_open, setup, teardown),
        cmocka_unit_test_setup_teardown(test_import_failures_undone, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pinned_while_exporting, setup, teardown),
        cmocka_unit_test_setup_teardown(test_export_fds_kept, setup, teardown),
        cmocka_unit_test_setup_teardown(test_threads, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
