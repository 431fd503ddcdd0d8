"""The simulator's page generator: the C (``hvsim.pages``) against its twin, and what it makes.

Both byte orders and several page sizes; the twin (``hvsim.pages_ref``)
defines every result. The generator's shape (pointer pages look like kernel
data, text pages like logs, random pages do not compress, kinds follow the
mix) is what the collector's benchmarks and the dump tests rely on.
"""

from __future__ import annotations

import struct
import zlib
from collections import Counter
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drgn_hvdump import native
from drgn_hvdump.errors import HvdumpError
from hvsim import pages, pages_ref
from hvsim.pages_ref import BUSY_MIX, PageMix, PageMixError
from tests.fuzz import TWIN_EXAMPLES

PAGE_ZERO, PAGE_TEXT, PAGE_POINTER, PAGE_RANDOM = range(len(pages_ref.PAGE_KIND_NAMES))

MODULES = [pytest.param(pages, id="c"), pytest.param(pages_ref, id="ref")]
U64 = st.integers(0, 2**64 - 1)
SMALL_PAGE = st.sampled_from([512, 1024, 2048, 4096])
KINDS = st.sampled_from([PAGE_ZERO, PAGE_TEXT, PAGE_POINTER, PAGE_RANDOM])
TWIN = settings(max_examples=TWIN_EXAMPLES)


def test_same_api() -> None:
    assert pages.__all__ == [n for n in pages_ref.__all__ if not n.startswith("check_")]
    for name in pages.__all__:
        assert hasattr(pages_ref, name), name
    # The shared pieces exist once: pages re-exports, it does not copy.
    assert pages.PageMix is pages_ref.PageMix
    assert pages.BUSY_MIX is pages_ref.BUSY_MIX
    assert pages.PageMixError is pages_ref.PageMixError


def only(kind: int) -> PageMix:
    """A mix with every page of one kind."""
    return PageMix(*(1.0 if k == kind else 0.0 for k in range(4)))


@st.composite
def mixes(draw: st.DrawFn) -> PageMix:
    weights = draw(st.lists(st.integers(0, 1000), min_size=4, max_size=4).filter(any))
    total = sum(weights)
    return PageMix(*(w / total for w in weights))


def test_c_kind_constants_match() -> None:
    from hvsim._gen import lib

    c = (lib.HV_PAGE_ZERO, lib.HV_PAGE_TEXT, lib.HV_PAGE_POINTER, lib.HV_PAGE_RANDOM)
    ref = (pages_ref.PAGE_ZERO, pages_ref.PAGE_TEXT, pages_ref.PAGE_POINTER, pages_ref.PAGE_RANDOM)
    assert c == ref == (PAGE_ZERO, PAGE_TEXT, PAGE_POINTER, PAGE_RANDOM)


@TWIN
@given(seed=U64, pfn=U64, mix=st.one_of(st.just(BUSY_MIX), mixes()))
def test_twin_page_kind(seed: int, pfn: int, mix: PageMix) -> None:
    assert pages.page_kind(seed, pfn, mix) == pages_ref.page_kind(seed, pfn, mix)


@TWIN
@given(seed=U64, pfn=U64, kind=KINDS, page_size=SMALL_PAGE, big_endian=st.booleans())
def test_twin_gen_page(seed: int, pfn: int, kind: int, page_size: int, big_endian: bool) -> None:
    got = pages.gen_page(seed, pfn, kind, page_size, big_endian)
    assert len(got) == page_size
    assert got == pages_ref.gen_page(seed, pfn, kind, page_size, big_endian)


@TWIN
@given(
    seed=U64,
    pfn=st.one_of(st.integers(0, 2**40), st.integers(2**64 - 4, 2**64 - 1)),
    npages=st.integers(0, 4),
    page_size=SMALL_PAGE,
    mix=st.one_of(st.just(BUSY_MIX), mixes()),
    big_endian=st.booleans(),
)
def test_twin_gen_pages_into(
    seed: int, pfn: int, npages: int, page_size: int, mix: PageMix, big_endian: bool
) -> None:
    npages = min(npages, 2**64 - pfn)
    got = bytearray(b"\xa5" * (npages * page_size))
    want = bytearray(len(got))
    pages.gen_pages_into(got, seed, pfn, npages, page_size, mix, big_endian)
    pages_ref.gen_pages_into(want, seed, pfn, npages, page_size, mix, big_endian)
    assert got == want


def test_gen_is_deterministic_and_seeded() -> None:
    a = bytearray(16 * 4096)
    b = bytearray(16 * 4096)
    pages.gen_pages_into(a, 7, 1000, 16, 4096, BUSY_MIX, True)
    pages.gen_pages_into(b, 7, 1000, 16, 4096, BUSY_MIX, True)
    assert a == b
    pages.gen_pages_into(b, 8, 1000, 16, 4096, BUSY_MIX, True)
    assert a != b
    for kind in (PAGE_TEXT, PAGE_POINTER, PAGE_RANDOM):
        one = pages.gen_page(7, 5, kind, 4096, False)
        assert one == pages.gen_page(7, 5, kind, 4096, False)
        assert one != pages.gen_page(7, 6, kind, 4096, False)
        assert one != pages.gen_page(8, 5, kind, 4096, False)


def test_gen_pages_into_is_gen_page_with_the_mix_kinds() -> None:
    seed, pfn, n, ps = 99, 2**32 - 3, 24, 4096
    buf = bytearray(n * ps)
    pages.gen_pages_into(buf, seed, pfn, n, ps, BUSY_MIX, False)
    for i in range(n):
        kind = pages.page_kind(seed, pfn + i, BUSY_MIX)
        assert buf[i * ps : (i + 1) * ps] == pages.gen_page(seed, pfn + i, kind, ps, False)


def test_gen_pages_into_writes_into_a_memoryview_slice() -> None:
    big = bytearray(b"\xff" * (4 * 4096))
    pages.gen_pages_into(memoryview(big)[4096:12288], 3, 10, 2, 4096, only(PAGE_ZERO), True)
    assert big[:4096] == b"\xff" * 4096
    assert big[4096:12288] == bytes(8192)
    assert big[12288:] == b"\xff" * 4096


def test_zero_pages_are_zero() -> None:
    assert pages.gen_page(1, 2, PAGE_ZERO, 65536, True) == bytes(65536)


def test_endianness_changes_only_pointer_byte_order() -> None:
    for pfn in range(8):
        le = pages.gen_page(5, pfn, PAGE_POINTER, 4096, False)
        be = pages.gen_page(5, pfn, PAGE_POINTER, 4096, True)
        assert le != be
        le_words = struct.unpack("<512Q", le)
        assert struct.unpack(">512Q", be) == le_words
        for kind in (PAGE_ZERO, PAGE_TEXT, PAGE_RANDOM):
            assert pages.gen_page(5, pfn, kind, 4096, False) == pages.gen_page(
                5, pfn, kind, 4096, True
            )


def test_pointer_pages_look_like_kernel_data() -> None:
    words: list[int] = []
    for pfn in range(32):
        page = pages.gen_page(11, pfn, PAGE_POINTER, 4096, True)
        words += struct.unpack(">512Q", page)
    n = len(words)
    kernel = [w for w in words if w >> 60 == 0xC]
    assert 0.45 < len(kernel) / n < 0.75
    assert all(w % 8 == 0 for w in kernel)
    assert 0.2 < words.count(0) / n < 0.45
    small = [w for w in words if 0 < w < 1024]
    assert 0.05 < len(small) / n < 0.2
    assert all(w == 0 or w >> 60 == 0xC or w < 1024 for w in words)
    # list_heads: pairs of equal words pointing at themselves (empty lists).
    self_pointing = 0
    for pfn in range(32):
        page = pages.gen_page(11, pfn, PAGE_POINTER, 4096, True)
        pairs = struct.unpack(">512Q", page)
        for i in range(0, 512, 2):
            here = 0xC000000000000000 | (pfn * 4096 + 8 * i)
            if pairs[i] == pairs[i + 1] == here:
                self_pointing += 1
    assert self_pointing > 32 * 256 * 0.04


def test_text_pages_are_log_like_and_compressible() -> None:
    page = pages.gen_page(3, 4, PAGE_TEXT, 65536, False)
    assert all(32 <= c < 127 or c == 10 for c in page)
    lines = page.split(b"\n")
    assert len(lines) == 65536 // 64 + 1 and lines[-1] == b""
    assert b"kernel: " in page
    assert len(page) / len(zlib.compress(page, 1)) > 3


def test_random_pages_do_not_compress() -> None:
    page = pages.gen_page(3, 4, PAGE_RANDOM, 65536, False)
    assert len(zlib.compress(page, 9)) >= len(page)


def test_kinds_follow_the_mix() -> None:
    n = 20_000
    for mix in (BUSY_MIX, PageMix(0.5, 0.1, 0.0, 0.4), PageMix(0.05, 0.05, 0.85, 0.05)):
        counts = Counter(pages.page_kind(123, pfn, mix) for pfn in range(n))
        shares = (mix.zero, mix.text, mix.pointer, mix.random)
        for kind, share in enumerate(shares):
            assert abs(counts[kind] / n - share) < 0.02, (mix, kind, counts)
            if share == 0:
                assert counts[kind] == 0


def test_kinds_of_generated_pages_follow_the_mix() -> None:
    n, ps = 4000, 512
    buf = bytearray(n * ps)
    pages.gen_pages_into(buf, 77, 0, n, ps, BUSY_MIX, False)
    zero_share = sum(native.zero_pages(buf, ps)) / n
    assert abs(zero_share - BUSY_MIX.zero) < 0.03


def test_kind_thresholds_are_exact() -> None:
    # For each comparison (zero, text, pointer), find with the twin the exact
    # share k/65536 at which a page flips kind; the C must flip at the same k.
    def mix_at(kind: int, k: int) -> PageMix:
        shares = [0.0] * 4
        shares[kind] = k / 65536
        shares[PAGE_RANDOM] += 1 - k / 65536
        return PageMix(*shares)

    for kind in (PAGE_ZERO, PAGE_TEXT, PAGE_POINTER):
        for pfn in range(5):
            lo, hi = 0, 65536  # kind at hi, not at lo
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if pages_ref.page_kind(9, pfn, mix_at(kind, mid)) == kind:
                    hi = mid
                else:
                    lo = mid
            assert pages.page_kind(9, pfn, mix_at(kind, hi)) == kind
            assert pages.page_kind(9, pfn, mix_at(kind, lo)) == PAGE_RANDOM


def test_single_kind_mixes() -> None:
    for kind in range(4):
        assert {pages.page_kind(1, pfn, only(kind)) for pfn in range(2000)} == {kind}


def test_page_mix_text_round_trip() -> None:
    assert PageMix.parse(str(BUSY_MIX)) == BUSY_MIX
    assert str(BUSY_MIX) == "zero=0.22,text=0.3,pointer=0.33,random=0.15"
    mix = PageMix.parse(" zero = 0.3, text=0.3,pointer=0.3 ,random=0.1 ")
    assert mix == PageMix(0.3, 0.3, 0.3, 0.1)
    assert PageMix.parse(str(mix)) == mix
    assert PageMix.parse("random=1") == only(PAGE_RANDOM)
    odd = PageMix(0.1, 0.2, 0.3, 0.4)
    assert PageMix.parse(str(odd)) == odd
    assert PageMix(1, 0, 0, 0).zero == 1.0 and isinstance(PageMix(1, 0, 0, 0).zero, float)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("zero=0.5,text", "not KIND=SHARE"),
        ("zero=0.5,bogus=0.5", "unknown page kind 'bogus'"),
        ("zero=0.5,zero=0.5", "given twice"),
        ("zero=half,text=0.5", "not a number"),
        ("zero=nan,text=1", "finite"),
        ("zero=inf", "finite"),
        ("zero=-0.1,text=1.1", "outside"),
        ("zero=0.3,text=0.3,pointer=0.3", "sum to 0.9"),
        ("zero=0.3,text=0.3,pointer=0.3,random=0.2", "sum to 1.1"),
    ],
)
def test_page_mix_parse_errors(text: str, message: str) -> None:
    with pytest.raises(PageMixError, match=message) as info:
        PageMix.parse(text)
    assert isinstance(info.value, ValueError) and isinstance(info.value, HvdumpError)
    assert "\n" not in str(info.value)


def test_page_mix_checks() -> None:
    PageMix(0.25, 0.25, 0.25, 0.25 + 5e-7)
    with pytest.raises(ValueError, match="sum to"):
        PageMix(0.25, 0.25, 0.25, 0.25 + 2e-6)
    with pytest.raises(ValueError, match="outside"):
        PageMix(1.5, -0.5, 0, 0)
    with pytest.raises(ValueError, match="number"):
        PageMix(True, 0, 0, 0)
    with pytest.raises(ValueError, match="number"):
        PageMix("0.5", 0.5, 0, 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="outside"):
        PageMix(float("nan"), 1, 0, 0)


def test_page_mix_thresholds() -> None:
    assert only(PAGE_ZERO).thresholds() == (65536, 65536, 65536)
    assert only(PAGE_RANDOM).thresholds() == (0, 0, 0)
    assert PageMix(0.25, 0.25, 0.25, 0.25).thresholds() == (16384, 32768, 49152)
    assert abs(sum(BUSY_MIX.__dict__.values()) - 1) < 1e-9


@pytest.mark.parametrize("module", MODULES)
def test_page_sizes(module: ModuleType) -> None:
    for ps in (512, 4096, 65536, 1 << 20):
        assert len(module.gen_page(1, 1, PAGE_TEXT, ps, False)) == ps
    for bad in (0, 256, 1000, 4097, 2 << 20, -4096):
        with pytest.raises(ValueError, match="power of two"):
            module.gen_page(1, 1, PAGE_TEXT, bad, False)


@pytest.mark.parametrize("module", MODULES)
def test_bad_arguments(module: ModuleType) -> None:
    with pytest.raises(TypeError, match="read-only"):
        module.gen_pages_into(bytes(4096), 1, 0, 1, 4096, BUSY_MIX, True)
    with pytest.raises(ValueError, match="exactly"):
        module.gen_pages_into(bytearray(8192), 1, 0, 1, 4096, BUSY_MIX, True)
    with pytest.raises(TypeError, match="PageMix"):
        module.gen_pages_into(bytearray(4096), 1, 0, 1, 4096, "zero=1", True)
    with pytest.raises(ValueError, match="seed"):
        module.page_kind(-1, 0, BUSY_MIX)
    with pytest.raises(ValueError, match="pfn"):
        module.gen_page(0, 2**64, PAGE_TEXT, 4096, True)
    with pytest.raises(ValueError, match="kind"):
        module.gen_page(0, 0, 4, 4096, True)
    with pytest.raises(ValueError, match="npages"):
        module.gen_pages_into(bytearray(8192), 0, 2**64 - 1, 2, 4096, BUSY_MIX, True)
    with pytest.raises(TypeError, match="int"):
        module.page_kind(1.5, 0, BUSY_MIX)


def test_buffers_are_released() -> None:
    import mmap

    # An mmap can only close when no view of it is left: the wrapper must let go.
    with mmap.mmap(-1, 2 * 4096) as m:
        pages.gen_pages_into(m, 1, 0, 2, 4096, BUSY_MIX, True)
    assert m.closed
