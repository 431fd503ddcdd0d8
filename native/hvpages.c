/*
 * hvpages.c - makedumpfile's dump-level decision over an array of struct page.
 *
 * The Python twin, which defines every result, is
 * drgn_hvdump.model.page_types.decide_pages (with page_type); this is the
 * same walk for the hot path: a 1 TiB LPAR with 64 KiB pages has 16 Mi
 * struct pages to decide.
 */
#include "hvnative.h"
#include "hvcommon.h"

static uint64_t ld(const uint8_t *p, unsigned size, int big)
{
    uint64_t v = 0;
    if (big) {
        for (unsigned i = 0; i < size; i++)
            v = v << 8 | p[i];
    } else {
        for (unsigned i = size; i > 0; i--)
            v = v << 8 | p[i - 1];
    }
    return v;
}

/* makedumpfile's test_bit(): bit (nr & 31) of the flags. */
static int bit31(uint64_t flags, int32_t nr)
{
    return (int)(flags >> (nr & 0x1F) & 1);
}

typedef struct {
    uint64_t flags, mapping, private_, compound_head;
    int32_t mapcount;
} fields;

static fields read_fields(const hv_page_layout *L, const uint8_t *e)
{
    fields f;
    int big = L->big_endian;
    f.flags = ld(e + L->flags, 8, big);
    f.mapping = ld(e + L->mapping, 8, big);
    f.mapcount = L->mapcount >= 0 ? (int32_t)(uint32_t)ld(e + L->mapcount, 4, big) : -1;
    f.private_ = L->private_ >= 0 ? ld(e + L->private_, 8, big) : 0;
    f.compound_head = L->compound_head >= 0 ? ld(e + L->compound_head, 8, big) : 0;
    return f;
}

static int is_slab(const hv_page_layout *L, const fields *f)
{
    if (L->has_slab_mc && f->mapcount == L->slab_mc)
        return 1;
    return (int)(f->flags >> L->pg_slab & 1);
}

static int is_anon(const hv_page_layout *L, const fields *f)
{
    return (f->mapping & 1) && !is_slab(L, f);
}

static int is_cache(const hv_page_layout *L, const fields *f)
{
    if (bit31(f->flags, L->pg_lru))
        return 1;
    int swapbacked = L->pg_swapbacked < 0 || bit31(f->flags, L->pg_swapbacked);
    return swapbacked && bit31(f->flags, L->pg_swapcache);
}

static int is_buddy(const hv_page_layout *L, const fields *f)
{
    if (L->has_buddy_mc)
        return !is_slab(L, f) && f->mapcount == L->buddy_mc;
    return L->pg_buddy >= 0 && (f->flags >> L->pg_buddy & 1);
}

/* (order, hugetlb) of a compound head at entry e (its first tail follows). */
static void compound(const hv_page_layout *L, const uint8_t *e, const fields *head,
                     uint64_t *order, int *hugetlb)
{
    const uint8_t *nxt = e + L->size;
    int big = L->big_endian;
    *order = 0;
    *hugetlb = 0;
    if (L->has_hugetlb_mc) {
        *order = ld(nxt + L->flags, 8, big) & 0xFF;
        *hugetlb = head->mapcount == L->hugetlb_mc;
        return;
    }
    if (L->pg_hugetlb >= 0) {
        uint64_t f1 = ld(nxt + L->flags, 8, big);
        *order = f1 & 0xFF;
        *hugetlb = (int)(f1 >> L->pg_hugetlb & 1);
        return;
    }
    if (L->order_off >= 0)
        *order = ld(nxt + L->order_off, (unsigned)L->order_size, big);
    if (L->dtor_off >= 0) {
        uint64_t d = ld(nxt + L->dtor_off, (unsigned)L->dtor_size, big);
        for (uint32_t i = 0; i < L->ndtors && i < 2; i++)
            if (d == L->dtors[i])
                *hugetlb = 1;
    }
}

/* The type excluding the page (0: kept) and the pages the decision covers. */
static int decide(const hv_page_layout *L, const fields *f, uint32_t level, uint64_t order,
                  int hugetlb, uint64_t *nr)
{
    *nr = 1;
    if (f->compound_head & 1)
        return 0;
    if ((level & 16) && L->knows_buddies && is_buddy(L, f)) {
        if (L->free_area_length >= 0 && f->private_ >= (uint64_t)L->free_area_length)
            return 0;
        if (f->private_ >= 64)
            return 0;
        *nr = 1ULL << f->private_;
        return HV_PAGE_FREE;
    }
    if ((level & 16) && L->has_unaccepted_mc && f->mapcount == L->unaccepted_mc &&
        L->free_area_length > 0) {
        *nr = 1ULL << (L->free_area_length - 1);
        return HV_PAGE_FREE;
    }
    int cache = is_cache(L, f), anon = is_anon(L, f), priv = bit31(f->flags, L->pg_private);
    uint64_t n = 1ULL << order;
    if ((level & 2) && cache && !priv && !anon) {
        *nr = n;
        return HV_PAGE_CACHE;
    }
    if ((level & 4) && cache && !anon) {
        *nr = n;
        return priv ? HV_PAGE_CACHE_PRIVATE : HV_PAGE_CACHE;
    }
    if ((level & 8) && (anon || hugetlb)) {
        *nr = n;
        return HV_PAGE_USER;
    }
    if (L->pg_hwpoison >= 0 && bit31(f->flags, L->pg_hwpoison)) {
        *nr = n;
        return HV_PAGE_HWPOISON;
    }
    if (L->has_offline_mc && !is_slab(L, f) && f->mapcount == L->offline_mc) {
        *nr = n;
        return HV_PAGE_OFFLINE;
    }
    return 0;
}

size_t hv_decide_pages(const uint8_t *raw, size_t count, uint64_t first_pfn,
                       const hv_page_layout *L, uint32_t level, uint64_t *starts,
                       uint64_t *ends, uint8_t *types)
{
    size_t n_out = 0;
    size_t i = 0;
    while (i < count) {
        const uint8_t *e = raw + i * L->size;
        fields f = read_fields(L, e);
        uint64_t pfn = first_pfn + i, order = 0, nr = 1;
        int hugetlb = 0;
        if (i + 1 < count && (f.flags & L->pg_head_mask)) {
            compound(L, e, &f, &order, &hugetlb);
            if (order >= 64 || (pfn & ((1ULL << order) - 1)))
                order = 0;
        }
        int type = decide(L, &f, level, order, hugetlb, &nr);
        if (!type) {
            i++;
            continue;
        }
        starts[n_out] = pfn;
        ends[n_out] = pfn + nr;
        types[n_out] = (uint8_t)type;
        n_out++;
        if (nr >= count - i)
            break;
        i += nr;
    }
    return n_out;
}
