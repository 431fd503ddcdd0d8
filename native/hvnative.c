/*
 * hvnative.c - the C hot loops of hvdump: zero and duplicate page scans,
 * XXH64 checksums and hash-MMU hashing (the page codecs are in hvcodec.c).
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
#include "hvcommon.h"

#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- helpers */

/* 2**64 / golden ratio: Fibonacci hashing's multiplier (dup_pages). */
#define GOLDEN 0x9E3779B97F4A7C15ULL

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
