/*
 * spare.c — handles a trade keeps for the mapping that follows it.
 *
 * Past the physical budget, or when a large block would raise the physical
 * peak, the allocation path gives idle extents back and then maps new memory
 * (alloc.c's recycle rung, then extend or map). Given back, an extent costs an
 * unmap and a release, and the new memory a create, a map and an access grant;
 * on an H200 the release and the create are the dear part (a 128 MiB chunk:
 * release ~85 µs, create ~37 µs; a handle mapped again at another address
 * ~1 µs: bench/RESULTS.md). So the recycle unmaps the extents it gives back but
 * keeps their handles in the request's spare set, and the mapping that follows
 * maps a kept handle wherever a piece of its range has exactly that handle's
 * size; the rest of the set is released before anything new is created, so
 * physical memory never stands higher than when the handles were released at
 * once, and the placement is the same to the byte (only which handle backs a
 * piece differs). A request ends with its set empty.
 *
 * The bytes a set holds count towards the heap's physical peak (spare_bytes),
 * which is what they are: memory held, mapped nowhere for a moment (or, for a
 * page that lingers, still mapped where it was until its release is done:
 * linger.c).
 */
#include "core/internal.h"

void spare_keep_locked(gpu_heap_t *h, spare_set *s, vmm_handle hd, size_t size, block *from) {
    gh_assert(s->n < SPARE_MAX, "a recycle keeps no more handles than its set holds");
    s->kept[s->n++] = (spare){.handle = hd, .size = size, .from = from};
    h->spare_bytes += size;
}

bool spare_take_locked(gpu_heap_t *h, spare_set *s, size_t size, spare *out) {
    for (unsigned i = 0; s && i < s->n; i++) {
        if (s->kept[i].size != size) continue;
        *out = s->kept[i];
        s->kept[i] = s->kept[--s->n];
        h->spare_bytes -= size;
        return true;
    }
    return false;
}

unsigned spare_hold(spare_set *s, unsigned held, size_t size) {
    for (unsigned i = held; s && i < s->n; i++) {
        if (s->kept[i].size != size) continue;
        spare t = s->kept[held];
        s->kept[held] = s->kept[i];
        s->kept[i] = t;
        return held + 1;
    }
    return held;
}

void spare_release_locked(gpu_heap_t *h, spare_set *s, unsigned keep) {
    while (s && s->n > keep) {
        spare sp = s->kept[--s->n];
        h->spare_bytes -= sp.size;
        if (sp.from) {
            linger_return_locked(h, &sp); /* still mapped where it was: idle there again */
            continue;
        }
        heap_unlock(h);
        handle_drop(h, sp.handle, sp.size); /* a release refused leaks the handle, counted */
        heap_lock(h);
    }
}
