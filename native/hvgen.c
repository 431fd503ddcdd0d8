/*
 * hvgen.c - the simulator's page generator: the content of every page of a
 * simulated LPAR's memory, a function of (seed, pfn), so memory costs no disk.
 *
 * The exact results are defined by the pure-Python twin in
 * hvsim/pages_ref.py; tests/test_hvsim_pages.py checks that the two agree.
 * Change both together. Built into hvsim._gen by native/build_native.py.
 */
#include "hvgen.h"
#include "hvcommon.h"

#include <string.h>

/* Salts so that a page's kind and its content use unrelated streams. */
#define KIND_SALT 0x243F6A8885A308D3ULL
#define CONTENT_SALT 0x13198A2E03707344ULL

/* Kernel linear-map base on 64-bit POWER: pointers to RAM look like this. */
#define KERNEL_BASE 0xC000000000000000ULL
#define ADDR_MASK 0x0FFFFFFFFFFFFFFFULL


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
