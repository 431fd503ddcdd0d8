/*
 * hvnative.c - the C hot loops of hvdump: simulated page contents, zero and
 * duplicate page scans, XXH64 checksums and hash-MMU hashing.
 *
 * The exact results are defined by the pure-Python twins in
 * drgn_hvdump/native_ref.py; tests/test_native.py checks that the two agree.
 * Change both together.
 *
 * All multi-byte loads and stores go through memcpy: buffers come from Python
 * (bytes, bytearray, mmap, memoryview slices) and need not be 8-byte aligned,
 * and memcpy of 8 bytes compiles to a single unaligned move on every target
 * we care about, without the undefined behaviour of a cast pointer.
 */
#include "hvnative.h"

#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- helpers */

/* 2**64 / golden ratio: Fibonacci hashing's multiplier (dup_pages). */
#define GOLDEN 0x9E3779B97F4A7C15ULL
/* Salts so that a page's kind and its content use unrelated streams. */
#define KIND_SALT 0x243F6A8885A308D3ULL
#define CONTENT_SALT 0x13198A2E03707344ULL

/* Kernel linear-map base on 64-bit POWER: pointers to RAM look like this. */
#define KERNEL_BASE 0xC000000000000000ULL
#define ADDR_MASK 0x0FFFFFFFFFFFFFFFULL

/* GCC and Clang have it on every 64-bit target; __extension__ keeps
 * -Wpedantic quiet. */
__extension__ typedef unsigned __int128 u128;

/* splitmix64's finaliser (Steele, Lea, Flood 2014): a bijection with full
 * avalanche, so it turns structured keys (seed, pfn) into independent-looking
 * 64-bit values cheaply. Used once per page, not per word. */
static inline uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* wyrand (Wang Yi's wyhash PRNG) for page content: a counter through one
 * 64x64->128 multiply folded to 64 bits. It passes PractRand and BigCrush,
 * and costs about half a splitmix64 step, which matters because
 * content generation is one draw per 8 or 16 bytes. Consecutive draws only
 * depend on each other through the add, so they overlap in the pipeline. */
#define WY_ADD 0xA0761D6478BD642FULL
#define WY_XOR 0xE7037ED1A0B428DBULL

static inline uint64_t next64(uint64_t *state)
{
    *state += WY_ADD;
    u128 t = (u128)*state * (*state ^ WY_XOR);
    return (uint64_t)(t >> 64) ^ (uint64_t)t;
}

static inline uint64_t bswap64(uint64_t x)
{
    return __builtin_bswap64(x);
}

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define HOST_BIG_ENDIAN 1
#else
#define HOST_BIG_ENDIAN 0
#endif

static inline void store64(uint8_t *dst, uint64_t v, int big_endian)
{
    /* Kernel data is written in the simulated kernel's byte order, which
     * need not be the host's. */
    if (big_endian != HOST_BIG_ENDIAN)
        v = bswap64(v);
    memcpy(dst, &v, 8);
}

static inline uint64_t load_le64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
#if HOST_BIG_ENDIAN
    v = bswap64(v);
#endif
    return v;
}

static inline uint32_t load_le32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
#if HOST_BIG_ENDIAN
    v = __builtin_bswap32(v);
#endif
    return v;
}

static inline uint64_t rotl64(uint64_t x, unsigned int r)
{
    return (x << r) | (x >> (64 - r));
}

/* ------------------------------------------------------------- page kinds */

static inline int kind_of(uint64_t kind_key, uint64_t pfn, uint32_t t0, uint32_t t1,
                          uint32_t t2)
{
    /* 16 bits are plenty: shares are given to 1e-6 but a 1/65536 grain is
     * far below what a simulated workload needs, and comparing small ints
     * keeps C and Python bit-identical without floating point. */
    uint32_t r = (uint32_t)(mix64(kind_key + pfn) >> 48);
    if (r < t0)
        return HV_PAGE_ZERO;
    if (r < t1)
        return HV_PAGE_TEXT;
    if (r < t2)
        return HV_PAGE_POINTER;
    return HV_PAGE_RANDOM;
}

int hv_page_kind(uint64_t seed, uint64_t pfn, uint32_t t0, uint32_t t1, uint32_t t2)
{
    return kind_of(mix64(seed ^ KIND_SALT), pfn, t0, t1, t2);
}

/* ---------------------------------------------------------- page content */

/* Log-like text is built from 8-byte tokens so that a line is eight aligned
 * 8-byte stores: one PRNG draw makes a whole 64-byte line (seven words and a
 * line ending), which is what makes text pages cheap. 6 bits per word and 3
 * per ending leave compressors about as much to do as real log text. */
static const char TEXT_WORDS[64][8] = {
    {'k','e','r','n','e','l',':',' '}, {'s','y','s','t','e','m','d',':'},
    {'s','s','h','d',':',' ',' ',' '}, {'a','u','d','i','t',':',' ',' '},
    {'u','s','b',' ','1','-','1',':'}, {'e','t','h','0',':',' ',' ',' '},
    {'s','d','a',':',' ',' ',' ',' '}, {'x','f','s',':',' ',' ',' ',' '},
    {'d','e','v','i','c','e',' ',' '}, {'d','r','i','v','e','r',' ',' '},
    {'m','o','d','u','l','e',' ',' '}, {'p','r','o','c','e','s','s',' '},
    {'t','h','r','e','a','d',' ',' '}, {'m','e','m','o','r','y',' ',' '},
    {'b','u','f','f','e','r',' ',' '}, {'r','e','q','u','e','s','t',' '},
    {'s','t','a','r','t','e','d',' '}, {'s','t','o','p','p','e','d',' '},
    {'f','a','i','l','e','d',' ',' '}, {'e','r','r','o','r',' ',' ',' '},
    {'w','a','r','n','i','n','g',':'}, {'t','i','m','e','o','u','t',' '},
    {'r','e','s','e','t',' ',' ',' '}, {'l','i','n','k',' ',' ',' ',' '},
    {'i','s',' ',' ',' ',' ',' ',' '}, {'u','p',' ',' ',' ',' ',' ',' '},
    {'d','o','w','n',' ',' ',' ',' '}, {'t','h','e',' ',' ',' ',' ',' '},
    {'f','o','r',' ',' ',' ',' ',' '}, {'w','i','t','h',' ',' ',' ',' '},
    {'f','r','o','m',' ',' ',' ',' '}, {'o','n',' ',' ',' ',' ',' ',' '},
    {'a','t',' ',' ',' ',' ',' ',' '}, {'t','o',' ',' ',' ',' ',' ',' '},
    {'o','f',' ',' ',' ',' ',' ',' '}, {'a','n','d',' ',' ',' ',' ',' '},
    {'n','o','t',' ',' ',' ',' ',' '}, {'n','e','w',' ',' ',' ',' ',' '},
    {'r','e','a','d',' ',' ',' ',' '}, {'w','r','i','t','e',' ',' ',' '},
    {'p','a','g','e',' ',' ',' ',' '}, {'c','p','u','0',' ',' ',' ',' '},
    {'c','p','u','1',' ',' ',' ',' '}, {'i','r','q',' ','1','7',' ',' '},
    {'p','i','d',' ','4','2','4','2'}, {'u','i','d','=','0',' ',' ',' '},
    {'o','k','.',' ',' ',' ',' ',' '}, {'d','o','n','e','.',' ',' ',' '},
    {'s','e','s','s','i','o','n',' '}, {'u','s','e','r',' ',' ',' ',' '},
    {'r','o','o','t',' ',' ',' ',' '}, {'l','o','g','i','n',' ',' ',' '},
    {'n','e','t','w','o','r','k',' '}, {'a','d','d','r','e','s','s',' '},
    {'p','o','r','t',' ','2','2',' '}, {'s','t','a','t','u','s','=','0'},
    {'m','o','u','n','t','e','d',' '}, {'v','o','l','u','m','e',' ',' '},
    {'b','l','o','c','k',' ',' ',' '}, {'q','u','e','u','e',' ',' ',' '},
    {'s','e','r','v','i','c','e',' '}, {'A','c','c','e','p','t','e','d'},
    {'c','l','o','s','e','d',' ',' '}, {'o','p','e','n','e','d',' ',' '},
};

static const char TEXT_ENDS[8][8] = {
    {'o','k','.',' ',' ',' ',' ','\n'}, {'d','o','n','e','.',' ',' ','\n'},
    {'f','a','i','l','e','d','.','\n'}, {'(','0','x','0',')',' ',' ','\n'},
    {'(','-','5',')',' ',' ',' ','\n'}, {'r','e','t','r','y','.',' ','\n'},
    {'[','O','K',']',' ',' ',' ','\n'}, {' ',' ',' ',' ',' ',' ',' ','\n'},
};

static void gen_text(uint8_t *dst, uint64_t state, size_t page_size)
{
    for (size_t off = 0; off < page_size; off += 64) {
        uint64_t r = next64(&state);
        for (unsigned int k = 0; k < 7; k++)
            memcpy(dst + off + 8 * k, TEXT_WORDS[(r >> (6 * k)) & 63], 8);
        memcpy(dst + off + 56, TEXT_ENDS[(r >> 42) & 7], 8);
    }
}

/* Kernel data pages (slab objects, page tables, struct page arrays) are
 * dominated by pointers into the linear map, mostly near each other, by
 * zeros and by small integers, with list_heads whose two words point at
 * neighbours or, for an empty list, both at the list_head itself.
 *
 * The page is made of 16-byte pairs, one draw r per pair: s1 = r & 15 and
 * s2 = (r >> 4) & 15 pick what each word is, v1 = bits 8..35 and v2 = bits
 * 36..63 (28 bits each) feed their values:
 *   s 0-4 zero, 5-9 near pointer (same 64 KiB as the page's base),
 *   10-11 far pointer (first 2 GiB), 12-13 small int, 14-15 16-byte aligned
 *   near pointer.
 * If s1 >= 14 the pair is a list_head: the second word points near too
 * (from v1 bits 12..23), and if bit 27 of v1 is set it is an empty list, both
 * words pointing at the pair itself.
 *
 * Each word is ((v << SHIFT[s]) & MASK[s]) + ADD[s] from 16-entry tables and
 * the list_head cases are applied with bit masks: s is random, so a branch on
 * it would mispredict often, and a mispredict costs more than a whole word. */
static const uint8_t POINTER_SHIFT[16] = {0, 0, 0, 0, 0, 3, 3, 3, 3, 3, 3, 3, 0, 0, 4, 4};
static const uint64_t POINTER_MASK[16] = {
    0, 0, 0, 0, 0,
    0xFFF8, 0xFFF8, 0xFFF8, 0xFFF8, 0xFFF8,
    0x7FFFFFF8, 0x7FFFFFF8,
    0x3FF, 0x3FF,
    0xFFF0, 0xFFF0,
};

static void gen_pointer(uint8_t *dst, uint64_t state, uint64_t pfn, size_t page_size,
                        int big_endian)
{
    /* Objects in one page mostly point into one 64 KiB neighbourhood. */
    uint64_t base = (next64(&state) >> 16) & 0xFFFFF0000ULL;
    uint64_t near = KERNEL_BASE | base;
    uint64_t add[16];
    for (unsigned int s = 0; s < 16; s++)
        add[s] = s < 5 ? 0 : s < 10 ? near : s < 12 ? KERNEL_BASE : s < 14 ? 0 : near;
    /* Physical address of this page, for self-pointing empty list_heads. */
    uint64_t self = pfn * (uint64_t)page_size;

    for (size_t off = 0; off < page_size; off += 16) {
        uint64_t r = next64(&state);
        unsigned int s1 = (unsigned int)(r & 15), s2 = (unsigned int)((r >> 4) & 15);
        uint64_t v1 = (r >> 8) & 0xFFFFFFF, v2 = r >> 36;
        uint64_t w1 = ((v1 << POINTER_SHIFT[s1]) & POINTER_MASK[s1]) + add[s1];
        uint64_t w2 = ((v2 << POINTER_SHIFT[s2]) & POINTER_MASK[s2]) + add[s2];
        uint64_t list = -(uint64_t)(s1 >= 14);
        uint64_t empty = list & -((v1 >> 27) & 1);
        uint64_t here = KERNEL_BASE | ((self + off) & ADDR_MASK);

        w2 = (w2 & ~list) | ((near + ((v1 >> 8) & 0xFFF0)) & list);
        w1 = (w1 & ~empty) | (here & empty);
        w2 = (w2 & ~empty) | (here & empty);
        store64(dst + off, w1, big_endian);
        store64(dst + off + 8, w2, big_endian);
    }
}

static void gen_random(uint8_t *dst, uint64_t state, size_t page_size)
{
    /* Always little-endian: random bytes have no byte order, and fixing one
     * keeps the content independent of the host and the kernel. */
    for (size_t off = 0; off < page_size; off += 8)
        store64(dst + off, next64(&state), 0);
}

static void gen_keyed(uint8_t *dst, uint64_t content_key, uint64_t pfn, int kind,
                      size_t page_size, int big_endian)
{
    uint64_t state = mix64(content_key + pfn);

    switch (kind) {
    case HV_PAGE_TEXT:
        gen_text(dst, state, page_size);
        break;
    case HV_PAGE_POINTER:
        gen_pointer(dst, state, pfn, page_size, big_endian);
        break;
    case HV_PAGE_RANDOM:
        gen_random(dst, state, page_size);
        break;
    default:
        memset(dst, 0, page_size);
        break;
    }
}

void hv_gen_page(uint8_t *dst, uint64_t seed, uint64_t pfn, int kind, size_t page_size,
                 int big_endian)
{
    gen_keyed(dst, mix64(seed ^ CONTENT_SALT), pfn, kind, page_size, big_endian);
}

void hv_gen_pages(uint8_t *dst, uint64_t seed, uint64_t pfn, size_t npages, size_t page_size,
                  uint32_t t0, uint32_t t1, uint32_t t2, int big_endian)
{
    uint64_t kind_key = mix64(seed ^ KIND_SALT);
    uint64_t content_key = mix64(seed ^ CONTENT_SALT);

    for (size_t i = 0; i < npages; i++) {
        int kind = kind_of(kind_key, pfn + i, t0, t1, t2);
        gen_keyed(dst + i * page_size, content_key, pfn + i, kind, page_size, big_endian);
    }
}

/* ------------------------------------------------------------- zero scan */

static int page_is_zero(const uint8_t *p, size_t page_size)
{
    /* OR 32 words together before testing: the inner loop has no branch, so
     * it vectorises, while the test per 256 bytes still stops early on the
     * first non-zero block (most non-zero pages are non-zero at the start). */
    for (size_t off = 0; off < page_size; off += 256) {
        uint64_t acc = 0;
        for (unsigned int k = 0; k < 32; k++) {
            uint64_t w;
            memcpy(&w, p + off + 8 * k, 8);
            acc |= w;
        }
        if (acc)
            return 0;
    }
    return 1;
}

void hv_zero_pages(const uint8_t *buf, size_t npages, size_t page_size, uint8_t *out)
{
    for (size_t i = 0; i < npages; i++)
        out[i] = (uint8_t)page_is_zero(buf + i * page_size, page_size);
}

/* ------------------------------------------------------------------ XXH64 */

/* XXH64 (Yann Collet, xxHash 0.8 spec): four independent multiply-rotate
 * lanes over 32-byte stripes, so a core keeps four multiplies in flight; then
 * the lanes are merged, the tail is folded in 8, 4 and 1 bytes at a time, and
 * a final avalanche. Chosen because it is fast, well-tested, and checkable
 * with the standard `xxhsum -H1` tool. */
#define P1 0x9E3779B185EBCA87ULL
#define P2 0xC2B2AE3D27D4EB4FULL
#define P3 0x165667B19E3779F9ULL
#define P4 0x85EBCA77C2B2AE63ULL
#define P5 0x27D4EB2F165667C5ULL

static inline uint64_t xxh_round(uint64_t acc, uint64_t input)
{
    acc += input * P2;
    acc = rotl64(acc, 31);
    return acc * P1;
}

static inline uint64_t xxh_merge(uint64_t acc, uint64_t val)
{
    acc ^= xxh_round(0, val);
    return acc * P1 + P4;
}

uint64_t hv_hash64(const uint8_t *p, size_t len, uint64_t seed)
{
    const uint8_t *end = p + len;
    uint64_t h;

    if (len >= 32) {
        const uint8_t *limit = end - 32;
        uint64_t v1 = seed + P1 + P2;
        uint64_t v2 = seed + P2;
        uint64_t v3 = seed;
        uint64_t v4 = seed - P1;
        do {
            v1 = xxh_round(v1, load_le64(p));
            v2 = xxh_round(v2, load_le64(p + 8));
            v3 = xxh_round(v3, load_le64(p + 16));
            v4 = xxh_round(v4, load_le64(p + 24));
            p += 32;
        } while (p <= limit);
        h = rotl64(v1, 1) + rotl64(v2, 7) + rotl64(v3, 12) + rotl64(v4, 18);
        h = xxh_merge(h, v1);
        h = xxh_merge(h, v2);
        h = xxh_merge(h, v3);
        h = xxh_merge(h, v4);
    } else {
        h = seed + P5;
    }
    h += (uint64_t)len;

    while (end - p >= 8) {
        h ^= xxh_round(0, load_le64(p));
        h = rotl64(h, 27) * P1 + P4;
        p += 8;
    }
    if (end - p >= 4) {
        h ^= (uint64_t)load_le32(p) * P1;
        h = rotl64(h, 23) * P2 + P3;
        p += 4;
    }
    while (p < end) {
        h ^= (uint64_t)(*p) * P5;
        h = rotl64(h, 11) * P1;
        p++;
    }
    h ^= h >> 33;
    h *= P2;
    h ^= h >> 29;
    h *= P3;
    h ^= h >> 32;
    return h;
}

void hv_page_hashes(const uint8_t *buf, size_t npages, size_t page_size, uint64_t *out)
{
    for (size_t i = 0; i < npages; i++)
        out[i] = hv_hash64(buf + i * page_size, page_size, 0);
}

/* -------------------------------------------------------- duplicate pages */

struct dup_slot {
    uint64_t hash;
    uint64_t first; /* 1 + index of the first page with this hash; 0 = empty */
};

int hv_dup_pages(const uint64_t *hashes, size_t n, int64_t *out)
{
    /* Open addressing with linear probing, at most half full so probes stay
     * short. A slot keeps the hash next to the index, so a probe costs one
     * cache miss, and "index + 1" makes an all-zero slot empty, so a hash of
     * 0 needs no special case. Hashes are spread with a Fibonacci multiply
     * because callers may pass structured values rather than page hashes. */
    unsigned int bits = 4;
    while (((size_t)1 << bits) < 2 * n)
        bits++;
    size_t mask = ((size_t)1 << bits) - 1;
    struct dup_slot *slots = calloc(mask + 1, sizeof(*slots));
    if (slots == NULL)
        return -1;

    for (size_t i = 0; i < n; i++) {
        uint64_t h = hashes[i];
        size_t s = (size_t)((h * GOLDEN) >> (64 - bits));
        for (;;) {
            struct dup_slot *slot = &slots[s];
            if (slot->first == 0) {
                slot->hash = h;
                slot->first = (uint64_t)i + 1;
                out[i] = -1;
                break;
            }
            if (slot->hash == h) {
                out[i] = (int64_t)(slot->first - 1);
                break;
            }
            s = (s + 1) & mask;
        }
    }
    free(slots);
    return 0;
}

/* --------------------------------------------------------- hash-MMU hashes */

uint64_t hv_vsid_scramble_256m(uint64_t proto_vsid)
{
    /* The product needs up to 92 bits: do it in 128 so nothing wraps. */
    return (uint64_t)(((u128)proto_vsid * 200730139u) % 0xFFFFFFFFFULL);
}

uint64_t hv_hpte_hash(uint64_t vsid, uint64_t ea, unsigned int page_shift, int ssize)
{
    uint64_t h;

    if (ssize == 0)
        h = vsid ^ ((ea & 0x0FFFFFFFULL) >> page_shift);
    else
        h = vsid ^ (vsid << 25) ^ ((ea & 0xFFFFFFFFFFULL) >> page_shift);
    return h & 0x7FFFFFFFFFULL;
}

void hv_hpte_hashes(const uint64_t *vsids, const uint64_t *eas, size_t n,
                    unsigned int page_shift, int ssize, uint64_t *out)
{
    for (size_t i = 0; i < n; i++)
        out[i] = hv_hpte_hash(vsids[i], eas[i], page_shift, ssize);
}
