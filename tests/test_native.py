"""The C hot loops (drgn_hvdump.native) against their Python twins (native_ref).

Twin checks run hypothesis on small inputs (the Python side is slow); unit
tests pin the definitions: known hash values, zero scans, duplicate pages,
HPTE hashes, page codecs and argument checking in both modules. (The
simulator's page generator is tests/test_hvsim_pages.py.)
"""

from __future__ import annotations

import errno
import mmap
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drgn_hvdump import native, native_ref
from hvsim.pages import BUSY_MIX, PAGE_RANDOM, PAGE_TEXT, gen_page, gen_pages_into
from tests.fuzz import TWIN_EXAMPLES

MODULES = [pytest.param(native, id="native"), pytest.param(native_ref, id="ref")]
U64 = st.integers(0, 2**64 - 1)
SMALL_PAGE = st.sampled_from([512, 1024, 2048, 4096])
TWIN = settings(max_examples=TWIN_EXAMPLES)


@st.composite
def sparse_pages(draw: st.DrawFn) -> tuple[bytes, int]:
    """Whole pages, mostly zero, with a few non-zero bytes anywhere (often at the ends)."""
    page_size = draw(SMALL_PAGE)
    npages = draw(st.integers(0, 4))
    buf = bytearray(npages * page_size)
    if npages:
        edges = st.sampled_from([0, page_size - 1, len(buf) - 1, len(buf) - page_size])
        spots = draw(st.lists(st.one_of(edges, st.integers(0, len(buf) - 1)), max_size=6))
        for pos in spots:
            buf[pos] = draw(st.integers(1, 255))
    return bytes(buf), page_size


# ----------------------------------------------------------- the two modules


def test_same_api() -> None:
    assert sorted(native.__all__) == sorted([*native_ref.__all__, "borrowed"])
    for name in native_ref.__all__:
        assert hasattr(native, name), name
    # The shared pieces exist once: native re-exports, it does not copy.
    assert native.PageBatch is native_ref.PageBatch


# -------------------------------------------------------------- twin checks


@TWIN
@given(data=sparse_pages())
def test_twin_zero_pages_sparse(data: tuple[bytes, int]) -> None:
    buf, page_size = data
    got = native.zero_pages(buf, page_size)
    assert got == native_ref.zero_pages(buf, page_size)
    assert len(got) == len(buf) // page_size


@TWIN
@given(page_size=SMALL_PAGE, data=st.data())
def test_twin_zero_pages_arbitrary(page_size: int, data: st.DataObject) -> None:
    npages = data.draw(st.integers(0, 3))
    buf = data.draw(st.binary(min_size=npages * page_size, max_size=npages * page_size))
    assert native.zero_pages(buf, page_size) == native_ref.zero_pages(buf, page_size)


def _write_both(
    tmp: Path, buf: bytes, zero: bytes, page_size: int, offset: int
) -> list[tuple[int, bytes]]:
    out = []
    for module in (native, native_ref):
        path = tmp / f"{module.__name__}.out"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            n = module.write_pages(fd, buf, zero, page_size, offset)
        finally:
            os.close(fd)
        out.append((n, path.read_bytes()))
    return out


@TWIN
@given(page_size=SMALL_PAGE, data=st.data())
def test_twin_write_pages(page_size: int, data: st.DataObject) -> None:
    npages = data.draw(st.integers(0, 40))
    zero = bytes(data.draw(st.lists(st.integers(0, 1), min_size=npages, max_size=npages)))
    buf = bytes((i // page_size + 1) & 0xFF for i in range(npages * page_size))
    offset = data.draw(st.sampled_from([0, 1, 4096, 12345]))
    with tempfile.TemporaryDirectory() as tmp:
        (n_c, got), (n_py, want) = _write_both(Path(tmp), buf, zero, page_size, offset)
    kept = [buf[i * page_size : (i + 1) * page_size] for i in range(npages) if not zero[i]]
    assert n_c == n_py == sum(map(len, kept))
    assert got == want
    assert got[offset:] == b"".join(kept)


def test_write_pages_more_runs_than_one_pwritev_takes(tmp_path: Path) -> None:
    # 3000 runs of one page: three pwritev calls of at most 1024 runs
    page_size = 512
    zero = bytes([0, 1] * 3000)
    buf = bytes((i // page_size) % 251 for i in range(len(zero) * page_size))
    (n_c, got), (n_py, want) = _write_both(tmp_path, buf, zero, page_size, 0)
    assert n_c == n_py == 3000 * page_size and got == want


@pytest.mark.parametrize("module", MODULES)
def test_write_pages_errors(module: ModuleType, tmp_path: Path) -> None:
    fd = os.open(tmp_path / "ro", os.O_RDONLY | os.O_CREAT, 0o600)
    try:
        with pytest.raises(OSError) as info:
            module.write_pages(fd, bytes(512), b"\0", 512, 0)
        assert info.value.errno == errno.EBADF
        with pytest.raises(ValueError, match="zero flags"):
            module.write_pages(fd, bytes(1024), b"\0", 512, 0)
    finally:
        os.close(fd)


def test_twin_buffer_address() -> None:
    m = mmap.mmap(-1, 1 << 16)
    try:
        view = memoryview(m)[4096:]
        assert native.buffer_address(view) == native_ref.buffer_address(view)
        assert native.buffer_address(m) % mmap.PAGESIZE == 0
        assert native.buffer_address(view) == native.buffer_address(m) + 4096
        view.release()
    finally:
        m.close()
    data = b"read-only bytes"
    assert native.buffer_address(data) == native_ref.buffer_address(data)


@TWIN
@given(data=sparse_pages())
def test_twin_page_hashes(data: tuple[bytes, int]) -> None:
    buf, page_size = data
    got = native.page_hashes(buf, page_size)
    assert got == native_ref.page_hashes(buf, page_size)
    assert all(0 <= h < 2**64 for h in got)


@TWIN
@given(buf=st.binary(max_size=700), seed=st.one_of(st.just(0), U64))
def test_twin_hash64(buf: bytes, seed: int) -> None:
    assert native.hash64(buf, seed) == native_ref.hash64(buf, seed)


@TWIN
@given(
    hashes=st.one_of(
        st.lists(st.integers(0, 5), max_size=60),
        st.lists(st.sampled_from([0, 1, 2**63, 2**64 - 1, 0x9E3779B97F4A7C15]), max_size=60),
        st.lists(U64, max_size=60),
    )
)
def test_twin_dup_pages(hashes: list[int]) -> None:
    got = native.dup_pages(hashes)
    assert got == native_ref.dup_pages(hashes)
    for i, j in enumerate(got):
        if j == -1:
            assert hashes[i] not in hashes[:i]
        else:
            assert j < i and hashes[j] == hashes[i] and hashes[j] not in hashes[:j]


@TWIN
@given(proto=st.one_of(st.integers(0, 2**36), U64))
def test_twin_vsid_scramble(proto: int) -> None:
    assert native.vsid_scramble_256m(proto) == native_ref.vsid_scramble_256m(proto)


@TWIN
@given(
    vsid=st.one_of(st.integers(0, 2**39 - 1), U64),
    ea=U64,
    page_shift=st.one_of(st.sampled_from([12, 16, 24]), st.integers(0, 63)),
    ssize=st.sampled_from([0, 1]),
)
def test_twin_hpte_hash(vsid: int, ea: int, page_shift: int, ssize: int) -> None:
    got = native.hpte_hash(vsid, ea, page_shift, ssize)
    assert got == native_ref.hpte_hash(vsid, ea, page_shift, ssize)
    assert 0 <= got < 2**39


@TWIN
@given(
    pairs=st.lists(st.tuples(U64, U64), max_size=20),
    page_shift=st.integers(0, 63),
    ssize=st.sampled_from([0, 1]),
)
def test_twin_hpte_hashes(pairs: list[tuple[int, int]], page_shift: int, ssize: int) -> None:
    vsids = [v for v, _ in pairs]
    eas = [e for _, e in pairs]
    got = native.hpte_hashes(vsids, eas, page_shift, ssize)
    assert got == native_ref.hpte_hashes(vsids, eas, page_shift, ssize)
    assert got == [native.hpte_hash(v, e, page_shift, ssize) for v, e in pairs]


# ----------------------------------------------------------- page generation


@pytest.mark.parametrize("module", MODULES)
def test_page_sizes(module: ModuleType) -> None:
    for bad in (0, 256, 1000, 4097, 2 << 20, -4096):
        with pytest.raises(ValueError, match="power of two"):
            module.zero_pages(b"", bad)


# ------------------------------------------------------------ scans, hashes


def test_zero_pages_single_byte_at_the_end() -> None:
    for ps in (512, 4096, 65536):
        buf = bytearray(3 * ps)
        assert native.zero_pages(buf, ps) == b"\x01\x01\x01"
        buf[-1] = 1
        assert native.zero_pages(buf, ps) == b"\x01\x01\x00"
        buf[-1] = 0
        buf[ps - 1] = 0x80
        assert native.zero_pages(buf, ps) == b"\x00\x01\x01"
        buf[ps - 1] = 0
        buf[ps] = 1
        assert native.zero_pages(buf, ps) == b"\x01\x00\x01"


def test_zero_pages_of_unaligned_views() -> None:
    raw = bytearray(1 + 2 * 4096)
    view = memoryview(raw)[1:]
    assert native.zero_pages(view, 4096) == b"\x01\x01"
    raw[-1] = 7
    assert native.zero_pages(view, 4096) == b"\x01\x00"
    assert native.page_hashes(view, 4096) == native_ref.page_hashes(bytes(view), 4096)


def test_hash64_known_values() -> None:
    # XXH64 reference values, as printed by `xxhsum -H1` (and xxHash's own sanity test).
    known = [
        (b"", 0, 0xEF46DB3751D8E999),
        (b"a", 0, 0xD24EC4F1A98C6E5B),
        (b"abc", 0, 0x44BC2CF5AD770999),
        (b"0123456789abcdef0123456789abcdef", 0, 0x642A94958E71E6C5),
        (b"The quick brown fox jumps over the lazy dog", 0, 0x0B242D361FDA71BC),
        (bytes(100_000), 0, 0x2C9FD5B2F34E23DB),
        (bytes(range(256)) * 4, 0, 0x6F3914F18FE4DF57),
        (b"", 2654435761, 0xAC75FDA2929B17EF),
    ]
    for data, seed, want in known:
        assert native.hash64(data, seed) == want, data[:16]
        if len(data) <= 4096:
            assert native_ref.hash64(data, seed) == want, data[:16]


@pytest.mark.tools
@pytest.mark.skipif(shutil.which("xxhsum") is None, reason="xxhsum (package xxhash) not installed")
def test_hash64_matches_xxhsum() -> None:
    for ps in (4096, 65536):
        page = gen_page(1, 2, PAGE_TEXT, ps, False)[: ps - 3]
        out = subprocess.run(["xxhsum", "-H1", "-"], input=page, capture_output=True, check=True)
        assert int(out.stdout.split()[0], 16) == native.hash64(page)


def test_page_hashes_are_hash64_of_each_page() -> None:
    buf = bytearray(4 * 4096)
    gen_pages_into(buf, 1, 0, 4, 4096, BUSY_MIX, True)
    hashes = native.page_hashes(buf, 4096)
    assert hashes == [native.hash64(buf[i * 4096 : (i + 1) * 4096]) for i in range(4)]
    assert native.page_hashes(b"", 4096) == []


def test_dup_pages_finds_repeated_pages() -> None:
    ps = 4096
    pages = [gen_page(1, pfn, PAGE_RANDOM, ps, False) for pfn in range(3)]
    order = [0, 1, 0, 2, 1, 1]
    buf = b"".join(pages[i] for i in order) + bytes(ps) * 2
    hashes = native.page_hashes(buf, ps)
    assert native.dup_pages(hashes) == [-1, -1, 0, -1, 1, 1, -1, 6]
    assert native.dup_pages([]) == []
    assert native.dup_pages([0] * 5) == [-1, 0, 0, 0, 0]


def test_dup_pages_large() -> None:
    hashes = [i % 1000 * 0x10000000000 for i in range(50_000)]
    got = native.dup_pages(hashes)
    assert got[:1000] == [-1] * 1000
    assert got[1000:] == [i % 1000 for i in range(1000, 50_000)]


def test_hpte_hash_known_values() -> None:
    ea = 0xC000000012345000
    # 256 MiB segment: page index within the segment is 0x2345.
    assert native.hpte_hash(0x123456789, ea, 12, 0) == 0x123456789 ^ 0x2345
    # 1 TiB segment: index within the segment is 0x12345, vsid folded with vsid << 25.
    assert native.hpte_hash(0x123456789, ea, 12, 1) == 0x4E314444CC
    assert native.hpte_hash(0, 0x0FFFF000, 12, 0) == 0xFFFF
    assert native.hpte_hash(0, 0xFFFFFFFFFFFF, 24, 1) == 0xFFFF
    assert native.hpte_hash(2**64 - 1, 0, 12, 0) == 0x7FFFFFFFFF
    assert native.hpte_hashes([1, 2], [0x1000, 0x2000], 12, 0) == [0, 0]


def test_vsid_scramble_known_values() -> None:
    modulus = 2**36 - 1
    assert native.vsid_scramble_256m(0) == 0
    assert native.vsid_scramble_256m(1) == 200730139
    assert native.vsid_scramble_256m(modulus) == 0
    assert native.vsid_scramble_256m(2**36) == 200730139
    # Overflows 64 bits in the product: the C must not wrap.
    assert native.vsid_scramble_256m(2**64 - 1) == (2**64 - 1) * 200730139 % modulus
    assert native.vsid_scramble_256m(0x0FFFFFFFF) == 0x0FFFFFFFF * 200730139 % modulus


# ------------------------------------------------------- argument checking


@pytest.mark.parametrize("module", MODULES)
def test_bad_buffers(module: ModuleType) -> None:
    with pytest.raises(ValueError, match="not a multiple of page_size"):
        module.zero_pages(bytes(4097), 4096)
    with pytest.raises(ValueError, match="not a multiple of page_size"):
        module.page_hashes(bytes(100), 512)
    with pytest.raises(TypeError, match="bytes-like"):
        module.hash64("text")
    with pytest.raises(ValueError, match="contiguous"):
        module.zero_pages(memoryview(bytes(8192))[::2], 4096)


@pytest.mark.parametrize("module", MODULES)
def test_bad_numbers(module: ModuleType) -> None:
    with pytest.raises(ValueError, match="seed"):
        module.hash64(b"x", 2**64)
    with pytest.raises(ValueError, match="hash"):
        module.dup_pages([1, -2])
    with pytest.raises(ValueError, match="page_shift"):
        module.hpte_hash(1, 2, 64, 0)
    with pytest.raises(ValueError, match="ssize"):
        module.hpte_hash(1, 2, 12, 2)
    with pytest.raises(ValueError, match="ea"):
        module.hpte_hash(1, -2, 12, 0)
    with pytest.raises(ValueError, match="same length"):
        module.hpte_hashes([1, 2], [3], 12, 0)
    with pytest.raises(ValueError, match="proto_vsid"):
        module.vsid_scramble_256m(2**64)
    with pytest.raises(TypeError, match="int"):
        module.hash64(b"x", 1.5)


def test_buffers_are_released() -> None:
    # An mmap can only close when no view of it is left: the wrappers must let go.
    with mmap.mmap(-1, 2 * 4096) as m:
        m[5] = 1
        native.zero_pages(m, 4096)
        native.page_hashes(m, 4096)
        native.hash64(m)
        with pytest.raises(ValueError):
            native.zero_pages(m, 3000)
        native_ref.zero_pages(m, 4096)
    assert m.closed


# ------------------------------------------------------------------ page codecs

CODEC_FLAGS = [
    native_ref.CODEC_NONE,
    native_ref.CODEC_ZLIB,
    native_ref.CODEC_LZO,
    native_ref.CODEC_SNAPPY,
    native_ref.CODEC_ZSTD,
]


def test_c_codec_constants_match() -> None:
    from drgn_hvdump._native import lib

    from drgn_hvdump.formats import kdump

    assert (lib.HV_CODEC_ZLIB, lib.HV_CODEC_LZO, lib.HV_CODEC_SNAPPY, lib.HV_CODEC_ZSTD) == (
        kdump.DUMP_DH_COMPRESSED_ZLIB,
        kdump.DUMP_DH_COMPRESSED_LZO,
        kdump.DUMP_DH_COMPRESSED_SNAPPY,
        kdump.DUMP_DH_COMPRESSED_ZSTD,
    )
    assert native.CODEC_NONE == lib.HV_CODEC_NONE == 0


@TWIN
@given(pages=sparse_pages(), codec=st.sampled_from(CODEC_FLAGS), seed=U64)
def test_twin_page_codec(pages: tuple[bytes, int], codec: int, seed: int) -> None:
    """Each twin's batch is one the other accepts: decodes to the pages, raw exactly
    when not smaller, zero pages empty; the descriptors agree byte for byte."""
    buf, ps = pages
    if ps < 4096:
        ps = 4096
        buf = buf.ljust(-(-len(buf) // ps) * ps, b"\0")
    n = len(buf) // ps
    if n:
        mixed = bytearray(buf)
        gen_pages_into(mixed, seed, 0, n, ps, BUSY_MIX, seed & 1 == 1)
        buf = bytes(a if i % 3 else b for i, (a, b) in enumerate(zip(buf, mixed, strict=True)))
    zero = native.zero_pages(buf, ps)
    for maker, other in ((native, native_ref), (native_ref, native)):
        batch = maker.PageCodec(codec, None, ps).compress(buf, zero)
        assert other.PageCodec(codec, None, ps).check(buf, zero, batch) == -1
        for i in range(n):
            if zero[i]:
                assert batch.sizes[i] == 0 and batch.flags[i] == 0
            elif batch.flags[i] == 0:
                assert batch.sizes[i] == ps
            else:
                assert batch.flags[i] == codec and 0 < batch.sizes[i] < ps
        # One page at a time too, as readers decode: both twins agree with the source.
        pos = 0
        for i in range(n):
            size, flag = batch.sizes[i], batch.flags[i]
            data = bytes(batch.data[pos : pos + size])
            pos += size
            if flag:
                page = buf[i * ps : (i + 1) * ps]
                assert other.PageCodec(codec, None, ps).decode(data, flag) == page
                assert maker.PageCodec(codec, None, ps).decode(data, flag) == page
        assert batch.stored == sum(batch.sizes)
        for big in (False, True):
            c = native.kdump_descs(batch, 1 << 40, 4096, ps, big)
            assert c == native_ref.kdump_descs(batch, 1 << 40, 4096, ps, big)


@pytest.mark.parametrize("mod", [native, native_ref], ids=["c", "python"])
def test_kdump_descs_follow_the_format_layout(mod: ModuleType) -> None:
    from array import array

    from drgn_hvdump.formats.kdump import PAGE_DESC, PageDesc

    batch = mod.PageBatch(b"x" * 7000, array("I", [0, 3000, 4000, 0]), array("I", [0, 2, 0, 0]))
    for order in ("little", "big"):
        got = mod.kdump_descs(batch, 0x10000, 0x8000, 4096, order == "big")
        assert got == b"".join(
            PAGE_DESC.pack(d, order)  # type: ignore[arg-type]
            for d in (
                PageDesc(0x8000, 4096, 0, 0),
                PageDesc(0x10000, 3000, 2, 0),
                PageDesc(0x10000 + 3000, 4000, 0, 0),
                PageDesc(0x8000, 4096, 0, 0),
            )
        )


@pytest.mark.parametrize("mod", [native, native_ref], ids=["c", "python"])
def test_page_codec_refuses_bad_arguments(mod: ModuleType) -> None:
    with pytest.raises(ValueError, match="unknown codec"):
        mod.PageCodec(3, None, 4096)
    with pytest.raises(ValueError, match="zlib level"):
        mod.PageCodec(native_ref.CODEC_ZLIB, 13, 4096)
    codec = mod.PageCodec(native_ref.CODEC_LZO, None, 4096)
    with pytest.raises(ValueError, match="zero flags"):
        codec.compress(bytes(8192), b"\0")


@pytest.mark.parametrize("mod", [native, native_ref], ids=["c", "python"])
@pytest.mark.parametrize("codec", [c for c in CODEC_FLAGS if c])
def test_decode_refuses_what_is_not_one_page(mod: Any, codec: int) -> None:
    """A corrupt block, a block of another codec, a block as large as a page, a block that
    decodes to less than a page: ValueError, never a short or wrong page."""
    ps = 4096
    page = bytes(range(256)) * 16
    good = bytes(mod.PageCodec(codec, None, ps).compress(page, b"\0").data)
    half = bytes(mod.PageCodec(codec, None, 2 * ps).compress(page * 2, b"\0").data)
    pc = mod.PageCodec(codec, None, ps)
    assert pc.decode(good, codec) == page
    for data, flag in ((good[: len(good) // 2], codec), (good, codec ^ 0x40), (page, codec)):
        with pytest.raises(ValueError):
            pc.decode(data, flag)
    with pytest.raises(ValueError):
        mod.PageCodec(codec, None, 2 * ps).decode(good, codec)  # half a page
    assert mod.PageCodec(codec, None, 2 * ps).decode(half, codec) == page * 2
