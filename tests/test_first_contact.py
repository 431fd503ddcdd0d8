"""What a new user meets first (issue 19's list): one clear line, the right exit status."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from drgn_hvdump.collect import progress as progress_mod
from drgn_hvdump.collect.progress import Progress
from tests.collect_support import hvdump


def _one_line(res: object) -> str:
    err = res.stderr
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert res.returncode != 0 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_version() -> None:
    res = hvdump("--version")
    assert res.returncode == 0 and res.stdout.strip() == "hvdump 0.1.0"


def test_status_of_a_missing_root_is_an_error() -> None:
    """A typo in --root must not look like a machine without dump support (exit 0)."""
    line = _one_line(hvdump("status", "--root", "/nonexistent/root"))
    assert "/nonexistent/root: no such directory" in line


def test_verify_says_what_the_directory_is(tmp_path: Path) -> None:
    assert "no such directory" in _one_line(hvdump("verify", str(tmp_path / "missing")))
    (tmp_path / "empty").mkdir()
    assert "not a dump directory" in _one_line(hvdump("verify", str(tmp_path / "empty")))
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "journal.jsonl").write_text('{"t":"start"}\n')
    line = _one_line(hvdump("verify", str(tmp_path / "half")))
    assert "has not finished" in line and "run the same hvdump collect again" in line


def test_convert_of_a_text_file_is_not_an_elf_file(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    line = _one_line(hvdump("convert", str(text), str(tmp_path / "out")))
    assert "not an ELF file" in line and "truncated" not in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["collect", "--root", "/", "-o", "/nonexistent/o", "--chunk-size", "-4M"],
        ["convert", "/nonexistent/v", "/nonexistent/o", "--chunk-size", "-16M"],
    ],
)
def test_negative_sizes_say_so(args: list[str]) -> None:
    res = hvdump(*args)
    assert res.returncode == 2 and "size must not be negative" in res.stderr, res.stderr


def test_hvsim_negative_memory_says_so(tmp_path: Path) -> None:
    import subprocess
    import sys

    res = subprocess.run(
        [str(Path(sys.executable).parent / "hvsim"), "create", str(tmp_path / "l"), "--memory", "-4G"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert res.returncode == 2 and "size must not be negative, got -4G" in res.stderr, res.stderr
    assert not (tmp_path / "l").exists()


def test_first_progress_frame_has_no_wild_eta(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first frame (after a slow start: planning, a replay) shows no ETA; the next
    ones take the pace since the first report."""
    clock = [100.0]
    monkeypatch.setattr(progress_mod.time, "monotonic", lambda: clock[0])
    out = io.StringIO()
    p = Progress(json_lines=False, tty=True, stream=out)
    clock[0] = 160.0  # a minute of planning before the first chunk
    p.update(1 << 20, 8 << 30, None, None, 0)
    assert "ETA     ?" in out.getvalue()
    clock[0] = 161.0
    p.update(101 << 20, 8 << 30, None, None, 0)  # 100 MiB/s since the first report
    frame = out.getvalue().rsplit("\r", 1)[-1]
    assert "ETA    81s" in frame, frame
