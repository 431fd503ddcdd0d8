/*
 * hvcommon.h - small inline helpers the C files of native/ share: byte-order
 * aware loads and stores, rotations. Not part of any cffi interface.
 */
#ifndef HVCOMMON_H
#define HVCOMMON_H

#include <stdint.h>
#include <string.h>

/* GCC and Clang have it on every 64-bit target; __extension__ keeps
 * -Wpedantic quiet. */
__extension__ typedef unsigned __int128 u128;

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
    /* Byte by byte: compilers turn this into one load (and a swap on a
     * big-endian host). */
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t rotl64(uint64_t x, unsigned int r)
{
    return (x << r) | (x >> (64 - r));
}

#endif /* HVCOMMON_H */
