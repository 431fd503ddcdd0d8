"""VMCOREINFO text: strict parsing, building, typed lookups, both byte orders of its note."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drgn_hvdump.errors import FormatError
from drgn_hvdump.formats.elfcore import Note, build_notes, parse_notes
from drgn_hvdump.formats.vmcoreinfo import (
    VMCOREINFO_NOTE_NAME,
    VMCOREINFO_NOTE_TYPE,
    build_vmcoreinfo,
    parse_vmcoreinfo,
    vmcoreinfo_length,
    vmcoreinfo_number,
    vmcoreinfo_offset,
    vmcoreinfo_size,
    vmcoreinfo_symbol,
)
from tests.fuzz import FUZZ_EXAMPLES
from tests.test_formats_strategies import BYTEORDERS, expect_format_error, fuzz_bytes

PATH = "/proc/vmcore"

SAMPLE = (
    b"OSRELEASE=2.6.27.19-5-ppc64\n"
    b"PAGESIZE=65536\n"
    b"SYMBOL(init_uts_ns)=c000000000a6c3a8\n"
    b"SYMBOL(node_online_map)=c000000000aa07c8\n"
    b"SIZE(page)=56\n"
    b"OFFSET(page.flags)=0\n"
    b"LENGTH(zone.free_area)=16\n"
    b"NUMBER(PG_lru)=5\n"
    b"NUMBER(NEG)=-3\n"
    b"NUMBER(VMALLOC_START)=0xd000000000000000\n"
    b"CRASHTIME=1227744000"
)


def test_sample_as_a_2_6_kernel_writes_it() -> None:
    info = parse_vmcoreinfo(SAMPLE + bytes(100))
    assert info["OSRELEASE"] == "2.6.27.19-5-ppc64"
    assert info["CRASHTIME"] == "1227744000"
    assert vmcoreinfo_symbol(info, "init_uts_ns") == 0xC000000000A6C3A8
    assert vmcoreinfo_size(info, "page") == 56
    assert vmcoreinfo_offset(info, "page.flags") == 0
    assert vmcoreinfo_length(info, "zone.free_area") == 16
    assert vmcoreinfo_number(info, "PG_lru") == 5
    assert vmcoreinfo_number(info, "NEG") == -3
    assert vmcoreinfo_number(info, "VMALLOC_START") == 0xD000000000000000
    assert vmcoreinfo_symbol(info, "missing") is None
    assert vmcoreinfo_size(info, "missing") is None


def test_value_may_hold_equals_and_be_empty() -> None:
    assert parse_vmcoreinfo(b"A=b=c\nB=\n") == {"A": "b=c", "B": ""}
    assert parse_vmcoreinfo(b"") == {}
    assert parse_vmcoreinfo(bytes(16)) == {}
    assert parse_vmcoreinfo(b"A=1\nA=2\n") == {"A": "2"}


def test_bad_number_lookup() -> None:
    info = {"SIZE(page)": "0x38", "SYMBOL(x)": "zz", "NUMBER(y)": "1.5"}
    with pytest.raises(FormatError, match=r"SIZE\(page\)='0x38' is not a number") as e:
        vmcoreinfo_size(info, "page", path=PATH)
    assert e.value.path == PATH
    with pytest.raises(FormatError):
        vmcoreinfo_symbol(info, "x")
    with pytest.raises(FormatError):
        vmcoreinfo_number(info, "y")


@pytest.mark.parametrize(
    ("data", "offset", "message"),
    [
        (b"A=1\nnoequals\n", 4, "expected KEY=value"),
        (b"A=1\n=1\n", 4, "expected KEY=value (empty key)"),
        (b"A=1\n\nB=2\n", 4, "expected KEY=value"),
        (b"A=1\nB=\x01\n", 6, "byte 0x01 is not printable ASCII"),
        (b"A=1\nB=\xc3\xa9\n", 6, "byte 0xc3 is not printable ASCII"),
        (b"A=1\0B=2\n", 3, "byte 0x00 is not printable ASCII"),
        (b"A=1\r\n", 3, "byte 0x0d"),
    ],
)
def test_errors_name_file_and_offset(data: bytes, offset: int, message: str) -> None:
    with pytest.raises(FormatError) as e:
        parse_vmcoreinfo(data, path=PATH, offset=0x1000)
    assert str(e.value).startswith(f"{PATH}: offset {0x1000 + offset:#x}: VMCOREINFO: {message}")


keys = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters="="),
    min_size=1,
    max_size=30,
)
values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)


@given(st.dictionaries(keys, values, max_size=20), st.integers(0, 64))
def test_round_trip(entries: dict[str, str], padding: int) -> None:
    text = build_vmcoreinfo(entries)
    assert parse_vmcoreinfo(text + bytes(padding)) == entries
    assert build_vmcoreinfo(list(entries.items())) == text


@given(st.dictionaries(keys, values, max_size=10), st.sampled_from(BYTEORDERS))
def test_in_a_note_of_either_byte_order(entries: dict[str, str], order: str) -> None:
    note = Note(VMCOREINFO_NOTE_NAME, VMCOREINFO_NOTE_TYPE, build_vmcoreinfo(entries))
    (back,) = parse_notes(build_notes([note], order), order)  # type: ignore[arg-type]
    assert parse_vmcoreinfo(back.desc) == entries


@pytest.mark.parametrize(
    "entries", [{"": "x"}, {"A=B": "x"}, {"A": "x\ny"}, {"A\n": "x"}, {"A": "é"}, {"A": "\0"}]
)
def test_build_refuses_what_cannot_round_trip(entries: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        build_vmcoreinfo(entries)


@settings(max_examples=FUZZ_EXAMPLES)
@given(fuzz_bytes(SAMPLE, max_size=200))
def test_fuzz(data: bytes) -> None:
    expect_format_error(parse_vmcoreinfo, data)
