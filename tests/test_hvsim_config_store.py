"""hvsim.config and hvsim.store: sizes, validation, the LPAR directory, atomic state, locking."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from hvsim.config import LparConfig, auto_reserve_size, format_size, parse_size
from hvsim.pages import PageMix
from hvsim.store import LparStore, StoreError


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("4G", 4 << 30),
        ("512M", 512 << 20),
        ("1T", 1 << 40),
        ("64K", 65536),
        ("64KiB", 65536),
        ("0x1000", 4096),
        ("4096", 4096),
        (" 2g ", 2 << 30),
        (12, 12),
    ],
)
def test_parse_size(text: str | int, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "4X", "G", "-1", "1.5G", "4 G B x"])
def test_parse_size_refuses_junk(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def test_format_size() -> None:
    assert format_size(4 << 30) == "4G"
    assert format_size(1 << 40) == "1T"
    assert format_size(65536) == "64K"
    assert format_size(4100) == "4100"


def test_auto_reserve_size_is_5_percent_rounded_down_at_least_256m() -> None:
    assert auto_reserve_size(1 << 30) == 256 << 20
    assert auto_reserve_size(1 << 40) == 52224 << 20


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"memory": 256 << 20}, "multiple of 256 MiB"),
        ({"memory": (1 << 30) + 4096}, "multiple of 256 MiB"),
        ({"memory": 32 << 40}, "multiple of 256 MiB"),
        ({"memory": 1 << 30, "cpus": 0}, "cpus"),
        ({"memory": 1 << 30, "endian": "middle"}, "endian"),
        ({"memory": 1 << 30, "page_size": 8192}, "page_size"),
        ({"memory": 1 << 30, "seed": -1}, "seed"),
        ({"memory": 1 << 30, "reserve_size": 128 << 20}, "reserve_size"),
        ({"memory": 1 << 30, "reserve_size": 1 << 30}, "leaves no memory"),
        ({"memory": 1 << 30, "quirks": "buggy"}, "quirks"),
        ({"memory": 1 << 30, "osrelease": "a b"}, "osrelease"),
    ],
)
def test_config_refuses_bad_values(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LparConfig(**kwargs)  # type: ignore[arg-type]


def test_config_json_round_trip() -> None:
    cfg = LparConfig(
        memory=4 << 40, cpus=64, endian="little", page_size=4096, seed=2**64 - 1,
        mix=PageMix.parse("zero=0.5,random=0.5"), quirks="corrected",
    )  # fmt: skip
    assert LparConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ValueError, match="unknown configuration keys"):
        LparConfig.from_json({**cfg.to_json(), "colour": "blue"})


def _mode(p: Path) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_store_layout_and_modes(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        store = LparStore.create(tmp_path / "lpar", {"memory": 1})
    finally:
        os.umask(old)
    assert _mode(store.path) == 0o700
    assert _mode(store.path / "data") == 0o700
    assert _mode(store.path / "config.json") == 0o600
    assert _mode(store.path / "lock") == 0o600
    with store.locked(exclusive=True):
        store.save_state({"a": 1})
    assert _mode(store.path / "state.json") == 0o600
    store.write_data("L1.ovl", [(0, b"abc"), (1 << 20, b"z")])
    assert _mode(store.data_path("L1.ovl")) == 0o600
    assert store.read_data("L1.ovl")[:3] == b"abc"
    # Sparse: a MiB hole costs no blocks.
    assert os.stat(store.data_path("L1.ovl")).st_blocks * 512 < 64 << 10
    assert [p.name for p in store.path.iterdir() if p.name.startswith(".")] == []


def test_store_refuses_existing_and_missing(tmp_path: Path) -> None:
    LparStore.create(tmp_path / "x", {})
    with pytest.raises(StoreError, match="already exists"):
        LparStore.create(tmp_path / "x", {})
    with pytest.raises(StoreError, match="no such LPAR"):
        LparStore.open(tmp_path / "nope")
    (tmp_path / "plain").mkdir()
    with pytest.raises(StoreError, match="not an hvsim LPAR"):
        LparStore.open(tmp_path / "plain")


def test_state_changes_are_noticed_across_store_objects(tmp_path: Path) -> None:
    a = LparStore.create(tmp_path / "l", {})
    b = LparStore.open(tmp_path / "l")
    assert b.load_state() is None
    with a.locked(exclusive=True):
        a.save_state({"n": 1})
    assert b.state_changed()
    state = b.load_state()
    assert state is not None and state["n"] == 1
    with a.locked(exclusive=True):
        a.save_state({"n": 2})
    assert b.state_changed()
    state = b.load_state()
    assert state is not None and state["n"] == 2


def test_save_needs_the_exclusive_lock(tmp_path: Path) -> None:
    s = LparStore.create(tmp_path / "l", {})
    with pytest.raises(RuntimeError):
        s.save_state({})
    with (
        s.locked(exclusive=False),
        pytest.raises(RuntimeError, match="upgrade"),
        s.locked(exclusive=True),
    ):
        pass


def test_corrupt_state_is_a_clear_error(tmp_path: Path) -> None:
    s = LparStore.create(tmp_path / "l", {})
    (s.path / "state.json").write_text("{not json")
    with pytest.raises(StoreError, match="corrupt state"):
        s.load_state()
