"""release_region: the kernel's map line and ``%lx %lx`` release requests."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drgn_hvdump.errors import FormatError
from drgn_hvdump.formats.release_region import (
    Extent,
    ReleaseMap,
    format_release_map,
    format_release_request,
    parse_release_map,
    parse_release_request,
)
from tests.fuzz import FUZZ_EXAMPLES
from tests.test_formats_strategies import Fuzzed, expect_format_error, fuzz_cases

PATH = "/sys/kernel/release_region"
GiB = 1 << 30

# A 6 GiB LPAR after a crash: scratch area at the top, rest of the reservation below.
EXAMPLE = ReleaseMap(
    cpu=Extent(0x177FEE000, 0x10000),
    hpte=Extent(0x177FFE000, 0x1000),
    dump=Extent(0x177FFF000, 0x10000000),
    reserved=Extent(0x10000000, 0x167FEE000),
)
EXAMPLE_LINE = (
    "CPU:0x177fee000-0x10000: HPTE:0x177ffe000-0x1000: "
    "DUMP:0x177fff000-0x10000000, 0x10000000-0x167fee000:\n"
)


def test_format_is_the_kernels_line() -> None:
    assert format_release_map(EXAMPLE) == EXAMPLE_LINE
    assert parse_release_map(EXAMPLE_LINE) == EXAMPLE
    assert parse_release_map(EXAMPLE_LINE.encode()) == EXAMPLE


def test_extent_helpers() -> None:
    e = Extent(0x1000, 0x2000)
    assert e.end == 0x3000
    assert e.overlaps(Extent(0x2FFF, 1)) and not e.overlaps(Extent(0x3000, 5))
    assert not Extent(0x1000, 0).overlaps(e)
    assert [name for name, _ in EXAMPLE.extents()] == ["CPU", "HPTE", "DUMP", "RESERVED"]


def test_literal_quirk_line_parses() -> None:
    # The 2.6-era kernel prints its own fresh header in the dump-waiting path:
    # bare offsets and zero lengths.
    line = "CPU:0x0-0x0: HPTE:0x10000-0x0: DUMP:0x11000-0x0, 0x10000000-0x167fee000:\n"
    m = parse_release_map(line)
    assert m.cpu == Extent(0, 0) and m.dump == Extent(0x11000, 0)


def test_doc_example_syntax_is_tolerated() -> None:
    # Documentation/powerpc/phyp-assisted-dump.txt: upper-case digits, no final colon
    # or newline. Its numbers are made up and overlap, so use consistent ones here.
    line = "CPU:0x177fee000-0x10000: HPTE:0x177ffe000-0x1000: DUMP:0x177fff000-0x10000000, 0x10000000-0x167FEE000"
    assert parse_release_map(line) == EXAMPLE
    assert parse_release_map(line + "\n") == EXAMPLE
    assert parse_release_map(line + ":") == EXAMPLE


def test_doc_example_numbers_overlap_and_are_refused() -> None:
    doc = (
        "CPU:0x177fee000-0x10000: HPTE:0x177ffe020-0x1000: "
        "DUMP:0x177fff020-0x10000000, 0x10000000-0x16F1D370A"
    )
    with pytest.raises(FormatError, match=r"RESERVED .* overlaps CPU"):
        parse_release_map(doc, path=PATH)


@pytest.mark.parametrize(
    ("text", "offset", "expected"),
    [
        ("", 0, "'CPU:'"),
        ("cpu:0x1-0x1", 0, "'CPU:'"),
        ("CPU:1-0x1", 4, "'0x'"),
        ("CPU:0x-0x1", 6, "a hex digit"),
        ("CPU:0x1+0x1", 7, "'-'"),
        ("CPU:0x1-0x1, HPTE", 11, "': HPTE:'"),
        ("CPU:0x1-0x1: HPTE:0x10-0x1: DUMP:0x20-0x1 0x30-0x1:\n", 41, "', '"),
        ("CPU:0x1-0x1: HPTE:0x10-0x1: DUMP:0x20-0x1, 0x30-0x1:\n\n", 53, "end of the text"),
        ("CPU:0x1-0x1: HPTE:0x10-0x1: DUMP:0x20-0x1, 0x30-0x1: ", 52, "end of the text"),
        (" CPU:0x1-0x1", 0, "'CPU:'"),
        ("CPU:0x1-0x1: HPTE:0x10-0x1: DUMP:0x20-0x1, 0x30-0x1::\n", 52, "end of the text"),
    ],
)
def test_errors_name_file_column_and_expectation(text: str, offset: int, expected: str) -> None:
    with pytest.raises(FormatError) as e:
        parse_release_map(text, path=PATH)
    msg = str(e.value)
    assert e.value.offset == offset
    assert msg.startswith(f"{PATH}: offset {offset:#x}: ")
    assert f"column {offset + 1}" in msg
    assert expected in msg


def test_number_overflow_and_range_overflow() -> None:
    big = "CPU:0x10000000000000000-0x1: HPTE:0x10-0x1: DUMP:0x20-0x1, 0x30-0x1:\n"
    with pytest.raises(FormatError, match="64 bits") as e:
        parse_release_map(big, path=PATH)
    assert e.value.offset == 6
    wrap = "CPU:0xffffffffffffffff-0x2: HPTE:0x10-0x1: DUMP:0x20-0x1, 0x30-0x1:\n"
    with pytest.raises(FormatError, match="past the end of the 64-bit"):
        parse_release_map(wrap, path=PATH)
    top = "CPU:0xffffffffffffffff-0x1: HPTE:0x10-0x1: DUMP:0x20-0x1, 0x30-0x1:\n"
    assert parse_release_map(top).cpu.end == 2**64


@pytest.mark.parametrize("pair", [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)])
def test_overlaps_are_refused(pair: tuple[int, int]) -> None:
    extents = [
        Extent(0x1000, 0x1000),
        Extent(0x3000, 0x1000),
        Extent(0x5000, 0x1000),
        Extent(0x7000, 0x1000),
    ]
    extents[pair[1]] = Extent(extents[pair[0]].addr + 0xFFF, 0x10)
    text = format_release_map(ReleaseMap(*extents))
    with pytest.raises(FormatError, match="overlaps") as e:
        parse_release_map(text, path=PATH)
    assert PATH in str(e.value) and e.value.offset is not None


@st.composite
def release_maps(draw: st.DrawFn) -> ReleaseMap:
    """Four disjoint extents in any order of addresses."""
    sizes = [draw(st.integers(0, 2**40)) for _ in range(4)]
    gaps = [draw(st.integers(0, 2**40)) for _ in range(4)]
    order = draw(st.permutations(range(4)))
    addr = draw(st.integers(0, 2**41))
    placed: list[Extent | None] = [None] * 4
    for i in order:
        addr += gaps[i]
        placed[i] = Extent(addr, sizes[i])
        addr += sizes[i]
    return ReleaseMap(*[e for e in placed if e is not None])


@given(release_maps())
def test_round_trip(m: ReleaseMap) -> None:
    line = format_release_map(m)
    assert re.fullmatch(r"CPU:0x[0-9a-f]+-0x[0-9a-f]+: HPTE:\S+: DUMP:\S+, \S+:\n", line)
    assert parse_release_map(line) == m
    assert parse_release_map(line.rstrip("\n")) == m
    assert parse_release_map(line.upper().replace("0X", "0x")) == m


# -- release requests (writes) ----------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"0x10000000 0x1000\n", (0x10000000, 0x1000)),
        (b"10000000 1000", (0x10000000, 0x1000)),
        (b"  \t0X1a\n\n0xB", (0x1A, 0xB)),
        (b"1 2 3 junk", (1, 2)),
        (b"1 2junk", (1, 2)),
        (b"0x 5", (0, 5)),  # "0x" then no digit: simple_strtoull gives 0
        (b"0xg 5", None),  # ... and stops after "0x", at 'g': no second number
        (b"1\xa02", (1, 2)),  # the kernel's isspace() includes Latin-1 NBSP
        (b"f" * 17 + b" 1", (2**64 - 1, 1)),  # low 64 bits, as the multiply wraps
        (b"1" + b"0" * 16 + b" 1", (0, 1)),
        (b"1\x00 2", None),  # a NUL ends the string
        (b"", None),
        (b"   ", None),
        (b"12", None),
        (b"12 ", None),
        (b"-1 2", None),
        (b"1,2", None),
        (b"x1 2", None),
        (b"+1 2", None),
    ],
)
def test_request_like_kernel_sscanf(data: bytes, expected: tuple[int, int] | None) -> None:
    if expected is None:
        with pytest.raises(FormatError, match="EINVAL"):
            parse_release_request(data)
    else:
        assert parse_release_request(data) == expected


def test_request_error_names_path_and_offset() -> None:
    with pytest.raises(FormatError) as e:
        parse_release_request(b"0x1000 zz", path=PATH)
    assert str(e.value).startswith(f"{PATH}: offset 0x7: ")


@given(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))
def test_request_round_trip(addr: int, size: int) -> None:
    text = format_release_request(addr, size)
    assert text == f"0x{addr:x} 0x{size:x}\n"
    assert parse_release_request(text.encode()) == (addr, size)


def test_request_format_refuses_out_of_range() -> None:
    with pytest.raises(ValueError):
        format_release_request(2**64, 1)
    with pytest.raises(ValueError):
        format_release_request(0, -1)


@settings(max_examples=FUZZ_EXAMPLES)
@given(fuzz_cases([EXAMPLE_LINE.encode(), b"0x10000000 0x1000\n"], max_size=160))
def test_fuzz(case: Fuzzed) -> None:
    """Both parsers see every input: each one's valid input, mutated, is junk to the other."""
    expect_format_error(parse_release_request, case.data)
    expect_format_error(parse_release_map, case.data.decode("latin-1"))  # type: ignore[arg-type]
