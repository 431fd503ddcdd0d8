/*
 * hvgen.h - the simulator's page generator (native/hvgen.c), for hvsim._gen.
 *
 * Every function has a pure-Python twin in hvsim/pages_ref.py that defines
 * its exact results; hvsim/pages.py wraps these with argument checks, so the
 * C does no validation of its own. The block between the cffi-cdef markers
 * is handed verbatim to cffi's cdef() by native/build_native.py.
 */
#ifndef HVGEN_H
#define HVGEN_H

#include <stddef.h>
#include <stdint.h>

/* cffi-cdef-begin */
#define HV_PAGE_ZERO 0
#define HV_PAGE_TEXT 1
#define HV_PAGE_POINTER 2
#define HV_PAGE_RANDOM 3

/* Kind of page `pfn`: thresholds t0 <= t1 <= t2 <= 65536 are the cumulative
 * shares of zero, text and pointer pages out of 65536. */
int hv_page_kind(uint64_t seed, uint64_t pfn, uint32_t t0, uint32_t t1, uint32_t t2);

/* Write one page of the given kind; page_size is a power of two in
 * [512, 1 MiB]. */
void hv_gen_page(uint8_t *dst, uint64_t seed, uint64_t pfn, int kind,
                 size_t page_size, int big_endian);

/* Write npages consecutive pages starting at pfn, kinds from the thresholds. */
void hv_gen_pages(uint8_t *dst, uint64_t seed, uint64_t pfn, size_t npages,
                  size_t page_size, uint32_t t0, uint32_t t1, uint32_t t2,
                  int big_endian);
/* cffi-cdef-end */

#endif /* HVGEN_H */
