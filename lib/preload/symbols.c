/*
 * symbols.c — this copy of gpuheap's public API, handed out by name.
 *
 * libgpuheap-preload.so links gpuheap statically and hides its API
 * (--exclude-libs): exported, gpu_malloc would interpose a program's own
 * libgpuheap.so, and the two copies' calls would mix. But the heap that serves
 * the interposer's cudaMalloc — and gpu_torch_alloc, when PyTorch loads this
 * object as its allocator — lives in this copy; a program that wants to see or
 * steer that heap (stats, trace, pause) must call this copy's functions, not
 * another library's. gpu_preload_symbol gives their addresses, so that the
 * program binds them explicitly and nothing is interposed. The Python package
 * (python/gpuheap) is the user: under gpuheap-run it binds the interposer it
 * finds in /proc/self/maps, and everywhere else it prefers this object, so that
 * gpuheap.torch.use() and the package's own calls share one heap.
 *
 * The table is gpuheap.h's function list; a name missing from the header fails
 * the build here, so the two stay in step.
 */
#include <string.h>

#include "preload.h"

#define PL_SYMBOL(fn) {#fn, (void *)fn},

/* Every public function of gpuheap.h. */
#define PL_PUBLIC_API(X)                                                                                \
    X(gpu_strerror) X(gpu_last_error) X(gpu_set_error_handler)                                          \
    X(gpu_config_init) X(gpu_heap_create) X(gpu_heap_destroy) X(gpu_heap_default)                       \
    X(gpu_malloc) X(gpu_heap_malloc) X(gpu_calloc) X(gpu_heap_calloc)                                   \
    X(gpu_malloc_aligned) X(gpu_heap_malloc_aligned) X(gpu_malloc_flags) X(gpu_heap_malloc_flags)       \
    X(gpu_realloc) X(gpu_heap_realloc) X(gpu_free) X(gpu_heap_free)                                     \
    X(gpu_malloc_usable_size) X(gpu_heap_malloc_usable_size)                                            \
    X(gpu_malloc_async) X(gpu_heap_malloc_async) X(gpu_free_async) X(gpu_heap_free_async)               \
    X(gpu_capture_begin) X(gpu_capture_end) X(gpu_set_free_order) X(gpu_free_order)                     \
    X(gpu_reserve) X(gpu_heap_reserve) X(gpu_commit) X(gpu_heap_commit) X(gpu_decommit)                \
    X(gpu_heap_decommit) X(gpu_release) X(gpu_heap_release)                                             \
    X(gpu_protect) X(gpu_heap_protect)                                                                  \
    X(gpu_map_file) X(gpu_heap_map_file) X(gpu_sync_file) X(gpu_heap_sync_file) X(gpu_unmap_file)       \
    X(gpu_heap_unmap_file)                                                                              \
    X(gpu_heap_stats) X(gpu_heap_stats_json) X(gpu_heap_trim) X(gpu_heap_check)                         \
    X(gpu_trace_start) X(gpu_trace_stop)

/* Memory control (tags, regions, pause and resume, the physical cap): in the
 * table from the header that declares it (GPU_TAG_MAX comes with it). */
#ifdef GPU_TAG_MAX
#define PL_MEMCTL_API(X)                                                                                \
    X(gpu_region_begin) X(gpu_region_end) X(gpu_malloc_tagged) X(gpu_pause) X(gpu_resume)               \
    X(gpu_tag_stats) X(gpu_tag_trim) X(gpu_set_limit) X(gpu_limit)
#else
#define PL_MEMCTL_API(X)
#endif

static const struct {
    const char *name;
    void *fn;
} symbols[] = {PL_PUBLIC_API(PL_SYMBOL) PL_MEMCTL_API(PL_SYMBOL)};

PL_EXPORT void *gpu_preload_symbol(const char *name) {
    /* The interposer's own handler first: a caller that installs one after this
     * (and passes errors on) leaves the exit report its reason. */
    pl_setup();
    if (!name) return NULL;
    for (size_t i = 0; i < sizeof symbols / sizeof symbols[0]; i++)
        if (!strcmp(symbols[i].name, name)) return symbols[i].fn;
    return NULL;
}
