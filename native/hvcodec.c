/*
 * hvcodec.c - kdump page codecs over whole batches, so that one call (and
 * one release of Python's GIL) covers megabytes of pages.
 *
 * The stored forms are the ones makedumpfile writes and crash, libkdumpfile
 * and drgn read: a zlib stream (RFC 1950), a raw LZO1X-1 block, a raw snappy
 * block, or one zstd frame per page. zlib streams come from libdeflate,
 * which makes the same format as zlib's compress2() about twice as fast at
 * level 1 with output of the same size. Python twins: PageCodec and
 * kdump_descs in drgn_hvdump/native_ref.py.
 */
#include "hvnative.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

#include <libdeflate.h>
#include <lzo/lzo1x.h>
#include <snappy-c.h>
#include <zstd.h>
#include <zstd_errors.h>

struct hv_codec {
    int codec;
    int level;
    size_t page_size;
    void *lzo_wrk;
    struct libdeflate_compressor *deflate;
    struct libdeflate_decompressor *inflate;
    ZSTD_CCtx *zc;
    ZSTD_DCtx *zd;
    uint8_t *page; /* one decoded page, for the checks */
};

hv_codec *hv_codec_new(int codec, int level, size_t page_size)
{
    hv_codec *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->codec = codec;
    c->level = level;
    c->page_size = page_size;
    c->page = malloc(page_size);
    if (!c->page)
        goto fail;
    switch (codec) {
    case HV_CODEC_NONE:
        break;
    case HV_CODEC_ZLIB:
        c->deflate = libdeflate_alloc_compressor(level);
        c->inflate = libdeflate_alloc_decompressor();
        if (!c->deflate || !c->inflate)
            goto fail;
        break;
    case HV_CODEC_LZO:
        if (lzo_init() != LZO_E_OK)
            goto fail;
        c->lzo_wrk = malloc(LZO1X_1_MEM_COMPRESS);
        if (!c->lzo_wrk)
            goto fail;
        break;
    case HV_CODEC_SNAPPY:
        break;
    case HV_CODEC_ZSTD:
        c->zc = ZSTD_createCCtx();
        c->zd = ZSTD_createDCtx();
        if (!c->zc || !c->zd)
            goto fail;
        break;
    default:
        goto fail;
    }
    return c;
fail:
    hv_codec_free(c);
    return NULL;
}

void hv_codec_free(hv_codec *c)
{
    if (!c)
        return;
    free(c->page);
    free(c->lzo_wrk);
    if (c->deflate)
        libdeflate_free_compressor(c->deflate);
    if (c->inflate)
        libdeflate_free_decompressor(c->inflate);
    ZSTD_freeCCtx(c->zc);
    ZSTD_freeDCtx(c->zd);
    free(c);
}

size_t hv_codec_slack(const hv_codec *c)
{
    size_t ps = c->page_size;
    /* LZO and snappy write their worst case before we can tell the result
     * is not smaller than the page; libdeflate and zstd stop at the bound. */
    if (c->codec == HV_CODEC_LZO)
        return ps / 16 + 64 + 3;
    if (c->codec == HV_CODEC_SNAPPY)
        return snappy_max_compressed_length(ps) - ps;
    return 0;
}

/* Compress one page into dst (room for page_size + slack); 0 means "store it
 * raw" (not smaller, or the library gave up at the bound), -1 a failure. */
static int64_t compress_one(hv_codec *c, const uint8_t *src, uint8_t *dst)
{
    size_t ps = c->page_size;
    switch (c->codec) {
    case HV_CODEC_ZLIB: {
        size_t n = libdeflate_zlib_compress(c->deflate, src, ps, dst, ps - 1);
        return (int64_t)n;
    }
    case HV_CODEC_LZO: {
        lzo_uint n = 0;
        if (lzo1x_1_compress(src, ps, dst, &n, c->lzo_wrk) != LZO_E_OK)
            return -1;
        return n < ps ? (int64_t)n : 0;
    }
    case HV_CODEC_SNAPPY: {
        size_t n = snappy_max_compressed_length(ps);
        if (snappy_compress((const char *)src, ps, (char *)dst, &n) != SNAPPY_OK)
            return -1;
        return n < ps ? (int64_t)n : 0;
    }
    case HV_CODEC_ZSTD: {
        size_t n = ZSTD_compressCCtx(c->zc, dst, ps - 1, src, ps, c->level);
        if (ZSTD_isError(n))
            return ZSTD_getErrorCode(n) == ZSTD_error_dstSize_tooSmall ? 0 : -1;
        return (int64_t)n;
    }
    default:
        return 0;
    }
}

int64_t hv_compress_pages(hv_codec *c, const uint8_t *src, size_t npages, const uint8_t *zero,
                          uint8_t *out, uint32_t *sizes, uint32_t *flags)
{
    size_t ps = c->page_size;
    uint8_t *pos = out;
    for (size_t i = 0; i < npages; i++) {
        const uint8_t *page = src + i * ps;
        if (zero[i]) {
            sizes[i] = 0;
            flags[i] = 0;
            continue;
        }
        int64_t n = compress_one(c, page, pos);
        if (n < 0)
            return -1;
        if (n == 0) {
            memcpy(pos, page, ps);
            sizes[i] = (uint32_t)ps;
            flags[i] = 0;
            pos += ps;
        } else {
            sizes[i] = (uint32_t)n;
            flags[i] = (uint32_t)c->codec;
            pos += n;
        }
    }
    return pos - out;
}

/* Decode one stored page into c->page; 0 on success. */
static int decode_one(hv_codec *c, const uint8_t *data, size_t size, uint32_t flag)
{
    size_t ps = c->page_size;
    if (flag != (uint32_t)c->codec)
        return -1;
    switch (flag) {
    case HV_CODEC_ZLIB: {
        size_t got = 0;
        if (libdeflate_zlib_decompress(c->inflate, data, size, c->page, ps, &got) !=
            LIBDEFLATE_SUCCESS)
            return -1;
        return got == ps ? 0 : -1;
    }
    case HV_CODEC_LZO: {
        lzo_uint got = ps;
        if (lzo1x_decompress_safe(data, size, c->page, &got, NULL) != LZO_E_OK)
            return -1;
        return got == ps ? 0 : -1;
    }
    case HV_CODEC_SNAPPY: {
        size_t got = ps;
        if (snappy_uncompress((const char *)data, size, (char *)c->page, &got) != SNAPPY_OK)
            return -1;
        return got == ps ? 0 : -1;
    }
    case HV_CODEC_ZSTD: {
        size_t got = ZSTD_decompressDCtx(c->zd, c->page, ps, data, size);
        return !ZSTD_isError(got) && got == ps ? 0 : -1;
    }
    default:
        return -1;
    }
}

int hv_decode_page(hv_codec *c, const uint8_t *data, size_t size, uint32_t flag, uint8_t *out)
{
    if (size >= c->page_size || decode_one(c, data, size, flag) != 0)
        return -1;
    memcpy(out, c->page, c->page_size);
    return 0;
}

int64_t hv_check_pages(hv_codec *c, const uint8_t *src, size_t npages, const uint8_t *zero,
                       const uint8_t *stored, const uint32_t *sizes, const uint32_t *flags)
{
    size_t ps = c->page_size;
    const uint8_t *pos = stored;
    for (size_t i = 0; i < npages; i++) {
        const uint8_t *page = src + i * ps;
        if (zero[i]) {
            if (sizes[i] != 0 || flags[i] != 0)
                return (int64_t)i;
            continue;
        }
        if (flags[i] == 0) {
            if (sizes[i] != ps || memcmp(pos, page, ps) != 0)
                return (int64_t)i;
        } else if (sizes[i] >= ps || decode_one(c, pos, sizes[i], flags[i]) != 0 ||
                   memcmp(c->page, page, ps) != 0) {
            return (int64_t)i;
        }
        pos += sizes[i];
    }
    return -1;
}

static void put64(uint8_t *p, uint64_t v, int big_endian)
{
    for (int k = 0; k < 8; k++)
        p[big_endian ? 7 - k : k] = (uint8_t)(v >> (8 * k));
}

static void put32(uint8_t *p, uint32_t v, int big_endian)
{
    for (int k = 0; k < 4; k++)
        p[big_endian ? 3 - k : k] = (uint8_t)(v >> (8 * k));
}

void hv_kdump_descs(size_t npages, const uint32_t *sizes, const uint32_t *flags,
                    uint64_t data_offset, uint64_t zero_offset, size_t page_size,
                    int big_endian, uint8_t *out)
{
    uint64_t pos = data_offset;
    for (size_t i = 0; i < npages; i++, out += 24) {
        if (sizes[i] == 0) {
            put64(out, zero_offset, big_endian);
            put32(out + 8, (uint32_t)page_size, big_endian);
            put32(out + 12, 0, big_endian);
        } else {
            put64(out, pos, big_endian);
            put32(out + 8, sizes[i], big_endian);
            put32(out + 12, flags[i], big_endian);
            pos += sizes[i];
        }
        put64(out + 16, 0, big_endian);
    }
}

#define HV_IOV_MAX 1024

/* Write iov[0..n) at offset, continuing after short writes; bytes or -errno. */
static int64_t pwritev_all(int fd, struct iovec *iov, int n, uint64_t offset)
{
    int64_t total = 0;
    while (n > 0) {
        ssize_t w = pwritev(fd, iov, n, (off_t)offset);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (w == 0)
            return -EIO;
        offset += (uint64_t)w;
        total += w;
        while (n > 0 && (size_t)w >= iov->iov_len) {
            w -= (ssize_t)iov->iov_len;
            iov++;
            n--;
        }
        if (n > 0 && w) {
            iov->iov_base = (uint8_t *)iov->iov_base + w;
            iov->iov_len -= (size_t)w;
        }
    }
    return total;
}

int64_t hv_write_pages(int fd, const uint8_t *src, size_t npages, size_t page_size,
                       const uint8_t *zero, uint64_t offset)
{
    struct iovec iov[HV_IOV_MAX];
    int64_t total = 0;
    size_t i = 0;
    while (i < npages) {
        int n = 0;
        while (i < npages && n < HV_IOV_MAX) {
            if (zero[i]) {
                i++;
                continue;
            }
            size_t j = i;
            while (j < npages && !zero[j])
                j++;
            iov[n].iov_base = (void *)(src + i * page_size);
            iov[n].iov_len = (j - i) * page_size;
            n++;
            i = j;
        }
        if (n) {
            int64_t w = pwritev_all(fd, iov, n, offset + (uint64_t)total);
            if (w < 0)
                return w;
            total += w;
        }
    }
    return total;
}
