/*
 * handout.c — resizing the table of handed-out blocks (handout.h): the rare part.
 *
 * The table is rebuilt, never grown in place: a rebuild keeps only the entries
 * whose block still carries the tc word it went out with (handout.h says why the
 * others are stale) and sizes the new table so that they fill at most a quarter
 * of it. It is rebuilt when it reaches half full, and shrunk when a removal
 * leaves it a sixteenth full, so each rebuild is paid for by as many puts or
 * removals as it moves entries: O(1) amortized. Reading a stale entry's tc word
 * is safe: block records stay in the heap's record pool (keeping the word) until
 * the heap closes, and the heap's closing drops this table first.
 */
#include <stdlib.h>

#include "cache/handout.h"
#include "cache/internal.h"

#define HANDOUT_MIN_SLOTS 64u

_Static_assert(GH_QUANTUM > HANDOUT_CLASS_MASK, "a block start leaves the low byte of its key to the class");
_Static_assert(TC_ALL <= HANDOUT_CLASS_MASK, "every class fits in a key's low byte");

/* Still out as it went out: the block's tc word is the one recorded. */
static bool handout_live(const handout *e) {
    return atomic_load_explicit(&e->b->tc, memory_order_relaxed) == e->w;
}

/* Moves the live entries into a table of its own size; false when out of host
 * memory (m unchanged). */
static bool rebuild(handout_map *m, uint32_t live) {
    uint32_t slots = HANDOUT_MIN_SLOTS;
    while (slots / 4 < live) {
        if (slots > UINT32_MAX / 2) return false;
        slots *= 2;
    }
    handout_map to = *m;
    to.slot = calloc(slots, sizeof *to.slot);
    if (!to.slot) return false;
    to.mask = slots - 1;
    to.n = 0;
    to.grow_at = slots / 2;
    to.shrink_at = slots > HANDOUT_MIN_SLOTS ? slots / 16 : 0;
    if (m->slot)
        for (uint32_t i = 0; i <= m->mask; i++) {
            const handout *e = &m->slot[i];
            if (!e->key || !handout_live(e)) continue;
            uint32_t j = handout_home(&to, e->key & ~HANDOUT_CLASS_MASK);
            while (to.slot[j].key) j = (j + 1) & to.mask;
            to.slot[j] = *e;
            to.n++;
        }
    free(m->slot);
    *m = to;
    return true;
}

bool handout_make_room(handout_map *m) {
    uint32_t live = 0;
    if (m->slot)
        for (uint32_t i = 0; i <= m->mask; i++) live += m->slot[i].key && handout_live(&m->slot[i]);
    return rebuild(m, live + 1);
}

void handout_shrink(handout_map *m) {
    if (!rebuild(m, m->n)) m->shrink_at = 0; /* keep the large table; try again after the next growth */
}

void handout_free(handout_map *m) {
    free(m->slot);
    m->slot = NULL;
    m->n = m->mask = m->grow_at = m->shrink_at = 0;
}
