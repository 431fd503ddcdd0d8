"""Binary layouts described once, as data, with the reader and writer generated.

A layout is a frozen dataclass whose fields are declared with the field
specifiers of this module (:func:`u32`, :func:`raw`, :func:`array`,
:func:`nested`, ...). Wrapping the class in :class:`Layout` computes the C
layout (natural alignment, as the kernel's and the firmware's structures use
it) and builds :mod:`struct` formats for both byte orders, so one declaration
gives the reader, the writer and every offset::

    @dataclass(frozen=True)
    class Nhdr:
        namesz: int = u32()
        descsz: int = u32()
        type: int = u32()

    NHDR = Layout(Nhdr, size=12)
    note = NHDR.unpack_from(buf, 0, "little")
    NHDR.pack(note, "big")

Parsing returns instances of the dataclass; packing takes them. Callers check
what the bytes *mean*; this module only moves them.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from drgn_hvdump.errors import FormatError

__all__ = [
    "I8",
    "I16",
    "I32",
    "I64",
    "U8",
    "U16",
    "U32",
    "U64",
    "Array",
    "ByteOrder",
    "FieldInfo",
    "Layout",
    "Nested",
    "Raw",
    "Scalar",
    "array",
    "check_byteorder",
    "check_u64",
    "i8",
    "i16",
    "i32",
    "i64",
    "nested",
    "raw",
    "u8",
    "u16",
    "u32",
    "u64",
]

T = TypeVar("T")

ByteOrder = Literal["big", "little"]
"""Byte order, spelled as :meth:`int.from_bytes` spells it."""

_PREFIX: dict[str, str] = {"big": ">", "little": "<"}
_META_KEY = "drgn_hvdump.layout"


def check_u64(name: str, value: int) -> None:
    """Refuse anything but an int in [0, 2**64)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not 0 <= value <= (1 << 64) - 1:
        raise ValueError(f"{name} must be in [0, 2**64), got {value}")


def check_byteorder(byteorder: str) -> ByteOrder:
    """Return ``byteorder`` typed as :data:`ByteOrder`, or raise ``ValueError``."""
    if byteorder == "big":
        return "big"
    if byteorder == "little":
        return "little"
    raise ValueError(f"byte order must be 'big' or 'little', not {byteorder!r}")


@dataclass(frozen=True)
class Scalar:
    """An integer field: ``struct`` code, size in bytes, signedness."""

    code: str
    size: int
    signed: bool

    @property
    def align(self) -> int:
        return self.size


U8 = Scalar("B", 1, False)
U16 = Scalar("H", 2, False)
U32 = Scalar("I", 4, False)
U64 = Scalar("Q", 8, False)
I8 = Scalar("b", 1, True)
I16 = Scalar("h", 2, True)
I32 = Scalar("i", 4, True)
I64 = Scalar("q", 8, True)


@dataclass(frozen=True)
class Raw:
    """A fixed number of bytes, kept as :class:`bytes`."""

    size: int

    @property
    def align(self) -> int:
        return 1


@dataclass(frozen=True)
class Array:
    """A fixed-length array of integers, kept as a tuple."""

    elem: Scalar
    count: int

    @property
    def size(self) -> int:
        return self.elem.size * self.count

    @property
    def align(self) -> int:
        return self.elem.align


@dataclass(frozen=True)
class Nested:
    """A structure inside a structure."""

    layout: Layout[Any]

    @property
    def size(self) -> int:
        return self.layout.size

    @property
    def align(self) -> int:
        return self.layout.align


FieldType = Scalar | Raw | Array | Nested


def _int_field(kind: Scalar, default: int) -> int:
    return dataclasses.field(default=default, metadata={_META_KEY: kind})


def u8(default: int = 0) -> int:
    """Declare an unsigned 8-bit field."""
    return _int_field(U8, default)


def u16(default: int = 0) -> int:
    """Declare an unsigned 16-bit field."""
    return _int_field(U16, default)


def u32(default: int = 0) -> int:
    """Declare an unsigned 32-bit field."""
    return _int_field(U32, default)


def u64(default: int = 0) -> int:
    """Declare an unsigned 64-bit field."""
    return _int_field(U64, default)


def i8(default: int = 0) -> int:
    """Declare a signed 8-bit field."""
    return _int_field(I8, default)


def i16(default: int = 0) -> int:
    """Declare a signed 16-bit field."""
    return _int_field(I16, default)


def i32(default: int = 0) -> int:
    """Declare a signed 32-bit field."""
    return _int_field(I32, default)


def i64(default: int = 0) -> int:
    """Declare a signed 64-bit field."""
    return _int_field(I64, default)


def raw(size: int) -> bytes:
    """Declare ``size`` bytes kept as they are (default: zeros)."""
    if size <= 0:
        raise ValueError("raw field size must be positive")
    result: bytes = dataclasses.field(default=bytes(size), metadata={_META_KEY: Raw(size)})
    return result


def array(elem: Scalar, count: int) -> tuple[int, ...]:
    """Declare ``count`` integers of type ``elem`` (default: zeros)."""
    if count <= 0:
        raise ValueError("array length must be positive")
    result: tuple[int, ...] = dataclasses.field(
        default=(0,) * count, metadata={_META_KEY: Array(elem, count)}
    )
    return result


def nested(layout: Layout[T]) -> T:
    """Declare a nested structure (default: the structure with all defaults).

    The default is a ``default_factory``, never a shared instance; ruff's
    RUF009 cannot tell, hence the ``noqa`` comments where it is used.
    """
    result: T = dataclasses.field(
        default_factory=layout.default, metadata={_META_KEY: Nested(layout)}
    )
    return result


@dataclass(frozen=True)
class FieldInfo:
    """Where a field lives inside its layout."""

    name: str
    offset: int
    kind: FieldType

    @property
    def size(self) -> int:
        return self.kind.size


def _align_up(value: int, align: int) -> int:
    return (value + align - 1) // align * align


class Layout(Generic[T]):
    """The binary form of a frozen dataclass declared with this module's fields.

    Fields are placed with C's natural alignment (each at a multiple of its
    own alignment; the total rounded up to the largest alignment). Pass
    ``size`` to have the computed size checked against the C definition.
    """

    def __init__(self, cls: type[T], *, size: int | None = None, name: str | None = None) -> None:
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"{cls.__name__} is not a dataclass")
        params = getattr(cls, "__dataclass_params__", None)
        if params is None or not params.frozen:
            raise TypeError(f"{cls.__name__} must be a frozen dataclass")
        self.cls = cls
        self.name = name or cls.__name__
        self._factory: Callable[..., T] = cls
        infos: list[FieldInfo] = []
        fmt: list[str] = []
        offset = 0
        align = 1
        for f in dataclasses.fields(cls):
            kind = f.metadata.get(_META_KEY)
            if not isinstance(kind, Scalar | Raw | Array | Nested):
                raise TypeError(f"{cls.__name__}.{f.name} is not declared with a layout field")
            start = _align_up(offset, kind.align)
            if start > offset:
                fmt.append(f"{start - offset}x")
            infos.append(FieldInfo(f.name, start, kind))
            fmt.append(_field_format(kind))
            offset = start + kind.size
            align = max(align, kind.align)
        total = _align_up(offset, align)
        if total > offset:
            fmt.append(f"{total - offset}x")
        if size is not None and size != total:
            raise TypeError(f"{self.name}: computed size {total} but expected {size}")
        self.fields: tuple[FieldInfo, ...] = tuple(infos)
        self.size: int = total
        self.align: int = align
        self._by_name = {info.name: info for info in infos}
        fmt_body = "".join(fmt)
        self._structs: dict[str, struct.Struct] = {
            order: struct.Struct(prefix + fmt_body) for order, prefix in _PREFIX.items()
        }
        # Layouts of plain integers and byte strings map 1:1 onto struct's
        # tuples, which lets the hot path call the constructor directly.
        self._flat = all(isinstance(i.kind, Scalar | Raw) for i in infos)
        assert self._structs["big"].size == total

    def __repr__(self) -> str:
        return f"Layout({self.name}, size={self.size})"

    def default(self) -> T:
        """The record with every field at its default (zero)."""
        return self._factory()

    def offset_of(self, path: str) -> int:
        """Byte offset of a field; nested fields are named ``outer.inner``."""
        head, _, rest = path.partition(".")
        info = self._by_name.get(head)
        if info is None:
            raise KeyError(f"{self.name} has no field {head!r}")
        if not rest:
            return info.offset
        if not isinstance(info.kind, Nested):
            raise KeyError(f"{self.name}.{head} is not a structure")
        return info.offset + info.kind.layout.offset_of(rest)

    # -- reading ----------------------------------------------------------

    def unpack_from(
        self,
        buf: bytes | bytearray | memoryview,
        offset: int = 0,
        byteorder: ByteOrder = "big",
        *,
        path: str | None = None,
    ) -> T:
        """Read one record at ``offset``; a short buffer raises :class:`FormatError`."""
        if offset < 0 or len(buf) - offset < self.size:
            have = max(0, len(buf) - max(offset, 0))
            raise FormatError(
                f"truncated {self.name}: needs {self.size} bytes, {have} left",
                path=path,
                offset=offset,
            )
        values = self._structs[byteorder].unpack_from(buf, offset)
        if self._flat:
            return self._factory(*values)
        record, _ = self._build(values, 0)
        return record

    def iter_unpack(
        self, buf: bytes | bytearray | memoryview, byteorder: ByteOrder = "big"
    ) -> Iterator[T]:
        """Read consecutive records filling ``buf`` (its length must be a multiple of the size)."""
        if len(buf) % self.size:
            raise ValueError(
                f"{self.name}: buffer length {len(buf)} is not a multiple of {self.size}"
            )
        factory = self._factory
        if self._flat:
            for values in self._structs[byteorder].iter_unpack(buf):
                yield factory(*values)
        else:
            for values in self._structs[byteorder].iter_unpack(buf):
                yield self._build(values, 0)[0]

    def _build(self, values: tuple[Any, ...], pos: int) -> tuple[T, int]:
        args: list[Any] = []
        for info in self.fields:
            kind = info.kind
            if isinstance(kind, Array):
                args.append(tuple(values[pos : pos + kind.count]))
                pos += kind.count
            elif isinstance(kind, Nested):
                inner, pos = kind.layout._build(values, pos)
                args.append(inner)
            else:
                args.append(values[pos])
                pos += 1
        return self._factory(*args), pos

    # -- writing ----------------------------------------------------------

    def pack(self, record: T, byteorder: ByteOrder = "big") -> bytes:
        """The bytes of ``record``; out-of-range values raise ``ValueError``."""
        values: list[Any] = []
        self._flatten(record, values)
        try:
            return self._structs[byteorder].pack(*values)
        except struct.error as e:
            raise ValueError(f"{self.name}: cannot pack {record!r}: {e}") from None

    def pack_into(
        self, buf: bytearray | memoryview, offset: int, record: T, byteorder: ByteOrder = "big"
    ) -> None:
        """Write ``record`` into ``buf`` at ``offset``."""
        values: list[Any] = []
        self._flatten(record, values)
        try:
            self._structs[byteorder].pack_into(buf, offset, *values)
        except struct.error as e:
            raise ValueError(f"{self.name}: cannot pack {record!r}: {e}") from None

    def _flatten(self, record: T, out: list[Any]) -> None:
        if not isinstance(record, self.cls):
            raise TypeError(
                f"{self.name}: expected {self.cls.__name__}, got {type(record).__name__}"
            )
        for info in self.fields:
            value = getattr(record, info.name)
            kind = info.kind
            if isinstance(kind, Array):
                if len(value) != kind.count:
                    raise ValueError(
                        f"{self.name}.{info.name}: needs {kind.count} values, got {len(value)}"
                    )
                out.extend(value)
            elif isinstance(kind, Nested):
                kind.layout._flatten(value, out)
            elif isinstance(kind, Raw):
                # struct pads or cuts "Ns" values silently; a writer must not.
                if len(value) != kind.size:
                    raise ValueError(
                        f"{self.name}.{info.name}: needs {kind.size} bytes, got {len(value)}"
                    )
                out.append(value)
            else:
                out.append(value)


def _field_format(kind: FieldType) -> str:
    if isinstance(kind, Scalar):
        return kind.code
    if isinstance(kind, Raw):
        return f"{kind.size}s"
    if isinstance(kind, Array):
        return f"{kind.count}{kind.elem.code}"
    # A nested layout's own alignment padding is part of its format, so its
    # body (without the byte-order prefix) can be spliced in as it is.
    return kind.layout._structs["big"].format[1:]
