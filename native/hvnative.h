/*
 * hvnative.h - the C hot loops of hvdump.
 *
 * Every function here has a pure-Python twin in drgn_hvdump/native_ref.py
 * that defines its exact results; drgn_hvdump/native.py wraps these with
 * argument checks. Callers (the Python wrappers) guarantee the preconditions
 * noted below, so the C does no validation of its own.
 *
 * The block between the cffi-cdef markers is handed verbatim to cffi's
 * cdef() by native/build_native.py, so it must stay plain declarations with
 * <stdint.h> types and integer #defines only: no includes, no expressions.
 */
#ifndef HVNATIVE_H
#define HVNATIVE_H

#include <stddef.h>
#include <stdint.h>

/* cffi-cdef-begin */
/* out[i] = 1 if page i is all zero bytes, else 0; page_size is a multiple
 * of 256. */
void hv_zero_pages(const uint8_t *buf, size_t npages, size_t page_size, uint8_t *out);

/* XXH64 of len bytes with the given seed. */
uint64_t hv_hash64(const uint8_t *buf, size_t len, uint64_t seed);

/* out[i] = XXH64 (seed 0) of page i. */
void hv_page_hashes(const uint8_t *buf, size_t npages, size_t page_size, uint64_t *out);

/* out[i] = index of the first j with hashes[j] == hashes[i] if that j < i,
 * else -1. Returns 0, or -1 if the hash table could not be allocated. */
int hv_dup_pages(const uint64_t *hashes, size_t n, int64_t *out);

/* (proto_vsid * 200730139) mod (2**36 - 1), the kernel's 256 MiB scramble. */
uint64_t hv_vsid_scramble_256m(uint64_t proto_vsid);

/* Primary HPTE group hash (39 bits); ssize 0 = 256 MiB, 1 = 1 TiB segment;
 * page_shift < 64. */
uint64_t hv_hpte_hash(uint64_t vsid, uint64_t ea, unsigned int page_shift, int ssize);

/* out[i] = hv_hpte_hash(vsids[i], eas[i], page_shift, ssize). */
void hv_hpte_hashes(const uint64_t *vsids, const uint64_t *eas, size_t n,
                    unsigned int page_shift, int ssize, uint64_t *out);
/* ---- kdump page codecs (native/hvcodec.c) ----
 * Codec numbers are the kdump format's page flags; HV_CODEC_NONE stores
 * every non-zero page raw. One hv_codec per thread (it owns the libraries'
 * contexts). A batch is npages pages of page_size bytes with zero[i] = 1 for
 * an all-zero page (nothing is stored for it). */
#define HV_CODEC_NONE 0
#define HV_CODEC_ZLIB 1
#define HV_CODEC_LZO 2
#define HV_CODEC_SNAPPY 4
#define HV_CODEC_ZSTD 32

typedef struct hv_codec hv_codec;

/* NULL if out of memory or the codec is unknown; level is the library's
 * (zlib 1-12 as libdeflate counts them, zstd 1-22; ignored for LZO and snappy). */
hv_codec *hv_codec_new(int codec, int level, size_t page_size);
void hv_codec_free(hv_codec *c);

/* Bytes of slack `out` needs past npages * page_size for hv_compress_pages. */
size_t hv_codec_slack(const hv_codec *c);

/* Store each non-zero page of src, one after another, into out: compressed
 * when that is smaller than the page (flags[i] = the codec), else raw
 * (flags[i] = 0, sizes[i] = page_size). Zero pages get sizes[i] = 0,
 * flags[i] = 0. out holds npages * page_size + hv_codec_slack(c) bytes.
 * Returns the bytes stored, or -1 if a library failed. */
int64_t hv_compress_pages(hv_codec *c, const uint8_t *src, size_t npages, const uint8_t *zero,
                          uint8_t *out, uint32_t *sizes, uint32_t *flags);

/* Decode every stored page of a batch and compare it with src (zero pages:
 * sizes[i] must be 0). Returns -1 if all match, else the first bad page. */
int64_t hv_check_pages(hv_codec *c, const uint8_t *src, size_t npages, const uint8_t *zero,
                       const uint8_t *stored, const uint32_t *sizes, const uint32_t *flags);

/* Decode one stored page (flag: its codec, which must be c's) into out
 * (page_size bytes). Returns 0, or -1 if it does not decode to exactly one page. */
int hv_decode_page(hv_codec *c, const uint8_t *data, size_t size, uint32_t flag, uint8_t *out);

/* ---- dump levels (native/hvpages.c) ----
 * struct page as a kernel's VMCOREINFO describes it; offsets and numbers are
 * -1 when absent, has_* say whether a value is known. Types are the index
 * into drgn_hvdump.model.page_types.EXCLUDED_TYPES plus one. */
#define HV_PAGE_CACHE 1
#define HV_PAGE_CACHE_PRIVATE 2
#define HV_PAGE_USER 3
#define HV_PAGE_FREE 4
#define HV_PAGE_HWPOISON 5
#define HV_PAGE_OFFLINE 6

typedef struct {
    uint32_t size;
    int32_t big_endian;
    int32_t flags, refcount, mapping, mapcount, private_, compound_head;
    int32_t pg_lru, pg_private, pg_swapcache, pg_swapbacked, pg_slab, pg_hwpoison;
    int32_t pg_hugetlb, pg_buddy;
    uint64_t pg_head_mask;
    int32_t has_buddy_mc, has_slab_mc, has_offline_mc, has_hugetlb_mc, has_unaccepted_mc;
    int32_t buddy_mc, slab_mc, offline_mc, hugetlb_mc, unaccepted_mc;
    int32_t free_area_length, knows_buddies;
    int32_t order_off, order_size, dtor_off, dtor_size;
    uint32_t ndtors;
    uint64_t dtors[2];
} hv_page_layout;

/* makedumpfile's decision for count struct pages of raw (count * size bytes)
 * from first_pfn at dump level level: each run left out as starts[k], ends[k],
 * types[k] (arrays of count entries); returns how many. A run may end past
 * first_pfn + count (a free block or compound page): the walk stops there. */
size_t hv_decide_pages(const uint8_t *raw, size_t count, uint64_t first_pfn,
                       const hv_page_layout *L, uint32_t level, uint64_t *starts,
                       uint64_t *ends, uint8_t *types);

/* The kdump page descriptors (offset, size, flags, page_flags = 0; 24 bytes
 * each, in the dump's byte order) of a batch whose stored bytes start at
 * data_offset; zero pages point at the shared zero page at zero_offset. */
void hv_kdump_descs(size_t npages, const uint32_t *sizes, const uint32_t *flags,
                    uint64_t data_offset, uint64_t zero_offset, size_t page_size,
                    int big_endian, uint8_t *out);
/* Write the non-zero pages of src (zero[i] set: page i is left out) to fd
 * one after another from offset. Runs of pages go out in one pwritev of up
 * to 1024 runs; short writes are continued. Returns the bytes written, or
 * -errno (EINVAL: O_DIRECT refused these writes). */
int64_t hv_write_pages(int fd, const uint8_t *src, size_t npages, size_t page_size,
                       const uint8_t *zero, uint64_t offset);
/* cffi-cdef-end */

#endif /* HVNATIVE_H */
