"""One owner per dump, trusted state only (issue 14), judged from hvsim's record.

* two ``hvdump collect`` on one FUSE-mounted root (same ``-o``, different
  ``-o``; started together and staggered; ``--wait`` and ``--wait-timeout``);
* links planted at every path the collector creates, a linked, foreign or
  group/world-writable output directory;
* runtime-registry entries of another user, and a stale entry of another LPAR
  once mounted at the same path, as ``find_collection`` and the drgn plugin's
  live :class:`~drgn_hvdump.plugin.source.DumpSource` see them;
* SIGTERM at random moments of a run.

Every scenario is checked against what hvsim recorded (release counters and
their targets, the release writes, the release events since the crash,
released and lost ranges, protection) and against the crashed kernel's memory
(:func:`~tests.collect_support.compare_with_truth`), not only against what
hvdump says of itself. Each test prints its counts (scenarios; releases of
unsaved data; pages lost; false "collected"/"OK") and the running totals of
the file, for docs/reliability.md.

The last three tests reproduce defects found while this file was written
(fixed since): a refusal that did not name the holder's directory, a link
planted as ``plan.json``, and two LPARs of one kernel and size that crashed in
the same second taken for one dump.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from drgn_hvdump.codecs import decompress_page
from drgn_hvdump.collect.collector import CollectOptions, collect
from drgn_hvdump.collect.ownership import EXIT_BUSY
from drgn_hvdump.dumpdir.identity import dump_identity
from drgn_hvdump.dumpdir.registry import (
    find_collection,
    read_registration,
    register_collection,
    registration_path,
)
from drgn_hvdump.dumpdir.view import CollectionView
from drgn_hvdump.formats.dump_header import build_dump_header
from drgn_hvdump.formats.elfcore import ElfCore
from drgn_hvdump.formats.kdump import KdumpFile
from drgn_hvdump.formats.vmcoreinfo import VMCOREINFO_NOTE_NAME, VMCOREINFO_NOTE_TYPE
from drgn_hvdump.fsutil import flock_holders
from drgn_hvdump.plugin.source import DumpSource, identify
from hvsim import Lpar
from tests.collect_support import (
    FAST_MIX,
    FUSE_MISSING,
    PROJECT,
    compare_with_truth,
    hvdump,
    make_lpar,
    manifest,
    mounted,
    released_before_durable,
)

needs_fuse = pytest.mark.skipif(bool(FUSE_MISSING), reason=FUSE_MISSING)

# 768 MiB is the smallest LPAR that registers a dump (0.5 GiB collected, 33
# release writes with 16 MiB chunks): a run lasts ~3-5 s on 2 busy cores.
MEMORY = "768M"
CHUNK = "16M"
# Rounds per output variant (same -o, different -o), alternately started together
# and staggered by a random delay.
ROUNDS = int(os.environ.get("HVDUMP_OWNERSHIP_ROUNDS", "20"))
SEED = int(os.environ.get("HVDUMP_OWNERSHIP_SEED", "14"))
NOBODY = 65534

# Across the tests of this file (printed after each test).
TOTALS: collections.Counter[str] = collections.Counter()
COUNT_KEYS = ("scenarios", "unsaved_releases", "pages_lost", "false_collected_or_ok")


def _report(
    capsys: pytest.CaptureFixture[str], name: str, counts: collections.Counter[str]
) -> None:
    for k in COUNT_KEYS:
        TOTALS[k] += counts[k]
    extra = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if k not in COUNT_KEYS)

    def line(c: collections.Counter[str]) -> str:
        return (
            f"{c['scenarios']} scenarios; releases of unsaved data {c['unsaved_releases']}, "
            f'pages lost {c["pages_lost"]}, false "collected"/"OK" {c["false_collected_or_ok"]}'
        )

    with capsys.disabled():
        print(
            f"\n[ownership] {name}: {line(counts)}"
            + (f" ({extra})" if extra else "")
            + f"\n[ownership] totals so far: {line(TOTALS)}"
        )


# -- processes ------------------------------------------------------------------------


@dataclass
class Run:
    """One ``hvdump collect`` in the background."""

    proc: subprocess.Popen[str]
    out: Path
    started: float
    ended: float = 0.0
    #: Wall clock of the end, to set against file times (``ended`` is monotonic).
    ended_wall: float = 0.0
    stdout: str = ""
    stderr: str = ""

    @property
    def rc(self) -> int | None:
        return self.proc.returncode

    @property
    def err_lines(self) -> list[str]:
        return self.stderr.strip().splitlines()

    @property
    def collected(self) -> bool:
        return self.rc == 0 and self.stdout.startswith("collected ")


def _launch(root: Path, out: Path, *extra: str) -> Run:
    env = dict(os.environ, PYTHONPATH=str(PROJECT))
    cmd = [sys.executable, "-m", "drgn_hvdump.cli", "collect", "--root", str(root)]
    cmd += ["-o", str(out), "--chunk-size", CHUNK, "--no-progress", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    return Run(proc, out, time.monotonic())


def _watch(lpar: Lpar, runs: list[Run], over: list[str], timeout: float = 300) -> None:
    """Wait for every run, sampling hvsim's release counters all along."""
    deadline = time.monotonic() + timeout
    while True:
        for r in runs:
            if not r.ended and r.proc.poll() is not None:
                r.ended = time.monotonic()
                r.ended_wall = time.time()
        over.extend(_over_targets(lpar))
        if all(r.ended for r in runs):
            break
        if time.monotonic() > deadline:
            for r in runs:
                if r.proc.poll() is None:
                    r.proc.kill()
            raise AssertionError(f"collectors still running after {timeout} s")
        time.sleep(0.1)
    for r in runs:
        r.stdout, r.stderr = r.proc.communicate()


def _wait_for(cond: Callable[[], bool], timeout: float = 120, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return False


# -- hvsim's record and the ground truth ---------------------------------------------------


def _release_record(lpar: Lpar) -> dict[str, Any]:
    rel: dict[str, Any] = lpar.status().get("kernel", {}).get("release") or {}
    return rel


def _over_targets(lpar: Lpar) -> list[str]:
    rel = _release_record(lpar)
    out = []
    for name in ("reserved", "scratch"):
        if rel and rel[f"{name}_counter"] > rel[f"{name}_target"]:
            out.append(
                f"{name} counter {rel[f'{name}_counter']:#x} past its target "
                f"{rel[f'{name}_target']:#x}"
            )
    return out


def _events_since_crash(lpar: Lpar) -> list[str] | None:
    """hvsim's events since the last crash (None when the crash fell off the list)."""
    events = [str(t) for _, t in lpar.status()["events"]]
    last = max((i for i, t in enumerate(events) if t.startswith("crash ")), default=None)
    return None if last is None else events[last:]


def _nothing_released(lpar: Lpar) -> list[str]:
    problems = []
    if lpar.state != "capture":
        problems.append(f"LPAR is {lpar.state}, not capture")
    if lpar.released_ranges():
        problems.append(f"released {lpar.released_ranges()}")
    rel = _release_record(lpar)
    if rel.get("writes"):
        problems.append(f"{rel['writes']} release writes made")
    return problems


def _pages_lost(lpar: Lpar) -> int:
    ps = lpar.config.page_size
    return sum((e - s) // ps for s, e, _ in lpar.lost_ranges())


def _wrong_pages(lpar: Lpar, out: Path) -> int:
    """Pages of the kdump in ``out`` that differ from the crashed kernel's memory."""
    m = manifest(out)
    ps = m["source"]["page_size"]
    wrong = 0
    kd = KdumpFile.open(out / m["dump"]["file"], decompress_page)
    try:
        for addr, size in m["dump"]["segments"]:
            for off in range(0, size, ps):
                pfn = (addr + off) // ps
                (desc,) = kd.descriptors(pfn, 1)
                if kd.decode(desc, pfn) != lpar.expected(addr + off, ps):
                    wrong += 1
    finally:
        kd.close()
    return wrong


def _check_collected(
    lpar: Lpar, root: Path, out: Path, counts: collections.Counter[str], said_collected: int
) -> list[str]:
    """After a collection into ``out`` finished: hvsim's record, ground truth, verify."""
    problems: list[str] = []
    ps = lpar.config.page_size
    if not (lpar.state == "running" and lpar.protected):
        problems.append(f"LPAR {lpar.state}, protected {lpar.protected}")
    lost = _pages_lost(lpar)
    counts["pages_lost"] += lost
    if lost:
        problems.append(f"lost ranges {lpar.lost_ranges()}")
    early = released_before_durable(lpar, out, ps)
    counts["unsaved_releases"] += len(early)
    if early:
        problems.append(f"released before durable: {early[:3]}")
    rel = _release_record(lpar)
    writes = manifest(out)["release"]["writes"]
    if not all(w["done"] for w in writes):
        problems.append("manifest: not every release write done")
    if rel.get("writes") != len(writes):
        problems.append(f"hvsim counted {rel.get('writes')} release writes for {len(writes)}")
    for name in ("reserved", "scratch"):
        if rel.get(f"{name}_counter") != rel.get(f"{name}_target"):
            problems.append(
                f"{name} counter {rel.get(f'{name}_counter')} != target {rel.get(f'{name}_target')}"
            )
    events = _events_since_crash(lpar)
    if events is not None:
        made = [t for t in events if t.startswith("release ")]
        rereg = [t for t in events if "registered again" in t]
        if len(made) != len(writes):
            problems.append(f"{len(made)} release events since the crash for {len(writes)}")
        if len(rereg) != 1 or "re-registered early" in rereg[0]:
            problems.append(f"re-registration events: {rereg}")
    truth = compare_with_truth(lpar, out)
    res = hvdump("verify", str(out))
    verified = res.returncode == 0 and "OK" in res.stdout
    if truth:
        problems.append(f"dump differs from the crashed memory: {truth[:3]}")
        counts["false_collected_or_ok"] += said_collected + int(verified)
    if not verified:
        problems.append(f"hvdump verify: {res.returncode} {res.stdout[-300:]} {res.stderr[-300:]}")
    if registration_path(root).exists():
        problems.append("the registry entry outlived the collection")
    return problems


def _recrash(lpar: Lpar) -> None:
    lpar.crash()
    assert lpar.state == "capture" and lpar.dump_waiting, lpar.status()["events"][-3:]


def _live_identity(root: Path) -> str:
    """The identity of the dump waiting under ``root``, computed as the collector does."""
    from drgn_hvdump.capture import open_capture

    capture = open_capture(root)
    state = capture.state()
    assert state.readable
    core = ElfCore.open(capture.vmcore_path)
    try:
        vmci = next(
            (
                n.desc
                for n in core.notes
                if n.name == VMCOREINFO_NOTE_NAME and n.type == VMCOREINFO_NOTE_TYPE
            ),
            None,
        )
    finally:
        core.close()
    return dump_identity(state.header_raw, vmci, capture.machine_identity())


# -- 1. two collectors on one root ------------------------------------------------------------


def _judge_pair(
    runs: list[Run],
    same_o: bool,
    counts: collections.Counter[str],
    problems: list[str],
    together: bool,
) -> Run | None:
    """Exactly one collects; the other refuses naming it, or (started later) truthfully
    comes too late."""
    winners = [r for r in runs if r.collected]
    if len(winners) != 1:
        problems.append(
            f"{len(winners)} collectors said collected: "
            + "; ".join(f"rc {r.rc} {r.stdout!r} {r.stderr!r}" for r in runs)
        )
        counts["false_collected_or_ok"] += max(0, len(winners) - 1)
        return winners[0] if winners else None
    (win,) = winners
    for r in runs:
        if r is win:
            continue
        lines = r.err_lines
        if "Traceback" in r.stderr:
            problems.append(f"traceback: {r.stderr[-500:]}")
        if r.rc == EXIT_BUSY:
            counts["refused_75"] += 1
            if len(lines) != 1 or not lines[0].startswith("hvdump: error: "):
                problems.append(f"busy: not one error line: {r.stderr!r}")
            elif f"pid {win.proc.pid}" not in lines[0]:
                problems.append(f"busy line does not name pid {win.proc.pid}: {lines[0]}")
            elif str(win.out) not in lines[0]:
                # see test_refusal_names_the_holders_directory
                counts["refused_75_without_directory"] += 1
        elif same_o and r.rc == 0 and "already collected" in r.stdout:
            counts["late_already_collected"] += 1
            if together:
                problems.append(f"started together, yet already collected: {r.stdout!r}")
        elif r.rc == 1 and len(lines) == 1 and "no dump" in lines[0]:
            counts["late_no_dump"] += 1
            if together:
                problems.append(f"started together, yet no dump: {lines[0]}")
        else:
            problems.append(f"unexpected outcome: rc {r.rc} out {r.stdout!r} err {r.stderr!r}")
        if not same_o and r.out.exists() and any(r.out.iterdir()):
            problems.append(f"the loser wrote into {r.out}: {os.listdir(r.out)}")
    return win


def _wait_round(
    lpar: Lpar,
    root: Path,
    base: Path,
    same_o: bool,
    counts: collections.Counter[str],
    problems: list[str],
) -> None:
    """A collects; B (--wait) waits for it, then tells the truth; C (--wait-timeout 0.5)
    gives up with 75."""
    out_a = base / "wait-a"
    out_b = out_a if same_o else base / "wait-b"
    out_c = out_a if same_o else base / "wait-c"
    over: list[str] = []
    a = _launch(root, out_a)
    registered = _wait_for(
        lambda: (
            (read_registration(root)[0] or {}).get("pid") == a.proc.pid or a.proc.poll() is not None
        )
    )
    assert registered and a.proc.poll() is None, "the first collector ended before registering"
    b = _launch(root, out_b, "--wait")
    c = _launch(root, out_c, "--wait-timeout", "0.5")
    _watch(lpar, [a, b, c], over)
    counts["scenarios"] += 2
    problems.extend(f"--wait: {p}" for p in over)
    if not a.collected:
        problems.append(f"--wait round: A did not collect: {a.rc} {a.stdout!r} {a.stderr!r}")
        return
    if f"waiting for pid {a.proc.pid}" not in b.stderr:
        problems.append(f"--wait: B did not say it waits for pid {a.proc.pid}: {b.stderr!r}")
    # A's last journal line ("done") is written before it lets the dump go; B may
    # wake and exit before A's own process has exited, never before that line.
    finished = (out_a / "journal.jsonl").stat().st_mtime
    if b.ended_wall < finished:
        problems.append(f"--wait: B ended {finished - b.ended_wall:.3f} s before A finished")
    if b.collected:
        counts["false_collected_or_ok"] += 1
    if same_o:
        counts["wait_then_already_collected"] += 1
        if not (b.rc == 0 and "already collected" in b.stdout):
            problems.append(f"--wait same -o: {b.rc} {b.stdout!r} {b.stderr!r}")
    else:
        counts["wait_then_no_dump"] += 1
        last = b.err_lines[-1] if b.err_lines else ""
        if not (b.rc == 1 and "no dump" in last):
            problems.append(f"--wait different -o: {b.rc} {b.stdout!r} {b.stderr!r}")
        if b.out.exists() and any(b.out.iterdir()):
            problems.append(f"--wait: B wrote into {b.out}: {os.listdir(b.out)}")
    c_lines = c.err_lines
    if not (
        c.rc == EXIT_BUSY
        and len(c_lines) == 2
        and f"waiting for pid {a.proc.pid}" in c_lines[0]
        and f"pid {a.proc.pid}" in c_lines[1]
        and str(out_a) in c_lines[1]
        and c.ended - c.started >= 0.5
    ):
        problems.append(f"--wait-timeout: {c.rc} {c.stderr!r} after {c.ended - c.started:.2f} s")
    problems.extend(f"--wait: {p}" for p in _check_collected(lpar, root, out_a, counts, 1))
    _recrash(lpar)


@needs_fuse
@pytest.mark.fuse
@pytest.mark.slow
@pytest.mark.parametrize("same_o", [True, False], ids=["same-o", "different-o"])
def test_two_collectors_one_owner(
    tmp_path: Path, same_o: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two collectors on one root, ROUNDS times: one collects, the other refuses naming
    its pid (exit 75) or, started after the first finished, says so truthfully;
    hvsim's counters never pass their targets; the LPAR ends protected and running,
    nothing lost; the winner's dump matches the crashed memory and verifies. Then
    --wait (waits, then the truth) and --wait-timeout (75 after the timeout)."""
    rng = random.Random(SEED + same_o)
    counts: collections.Counter[str] = collections.Counter()
    problems: list[str] = []
    lpar = make_lpar(tmp_path / "lpar", memory=MEMORY, quirks="faithful", seed=SEED)
    with mounted(lpar, tmp_path / "root") as root:
        for i in range(ROUNDS):
            together = i % 2 == 0
            out_a = tmp_path / f"r{i}-a"
            out_b = out_a if same_o else tmp_path / f"r{i}-b"
            delay = 0.0 if together else rng.uniform(0.05, 3.0)
            over: list[str] = []
            a = _launch(root, out_a)
            if delay:
                time.sleep(delay)
            b = _launch(root, out_b)
            _watch(lpar, [a, b], over)
            counts["scenarios"] += 1
            counts["together" if together else "staggered"] += 1
            found = list(over)
            win = _judge_pair([a, b], same_o, counts, found, together)
            if win is not None:
                found += _check_collected(lpar, root, win.out, counts, 1)
            when = "together" if together else f"+{delay:.2f} s"
            problems += [f"round {i} ({when}): {p}" for p in found]
            if lpar.state != "capture":
                _recrash(lpar)
        _wait_round(lpar, root, tmp_path, same_o, counts, problems)
    _report(capsys, f"two collectors, {'same' if same_o else 'different'} -o", counts)
    assert problems == [], "\n".join(problems[:40])


@needs_fuse
@pytest.mark.fuse
def test_refusal_names_the_holders_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two collectors started together: the refusal names the holder's pid, output
    directory and start time (the holder registers as soon as it has the lock and
    knows the dump, and the refused side waits up to 1 s for that entry)."""
    counts: collections.Counter[str] = collections.Counter()
    lines: list[str] = []
    lpar = make_lpar(tmp_path / "lpar", memory=MEMORY, quirks="faithful", seed=SEED + 1)
    with mounted(lpar, tmp_path / "root") as root:
        for i in range(6):  # started together, the refusal nearly always comes first
            if any(" into /" not in ln for ln in lines):
                break
            runs = [_launch(root, tmp_path / f"r{i}-{k}") for k in "ab"]
            _watch(lpar, runs, [])
            counts["scenarios"] += 1
            problems: list[str] = []
            win = _judge_pair(runs, False, counts, problems, True)
            assert win is not None and problems == [], problems
            assert _check_collected(lpar, root, win.out, counts, 1) == []
            lines += [r.err_lines[0] for r in runs if r.rc == EXIT_BUSY]
            _recrash(lpar)
    _report(capsys, "refusal names the holder's directory", counts)
    named = [ln for ln in lines if " into /" in ln and " since " in ln]
    assert named == lines, f"refusals without the holder's directory: {lines}"


# -- 2. planted links, untrusted output directories -------------------------------------------

CREATED = ["dump.kdump", "dump.elf", "journal.jsonl", "manifest.json", "regsave.bin", "hpte.bin"]


@dataclass(frozen=True)
class FileState:
    data: bytes
    mode: int
    uid: int
    mtime_ns: int
    ino: int

    @classmethod
    def of(cls, path: Path) -> FileState:
        st = os.lstat(path)
        return cls(path.read_bytes(), st.st_mode, st.st_uid, st.st_mtime_ns, st.st_ino)


def _secret(tmp_path: Path) -> tuple[Path, FileState]:
    """A root-only file outside every output directory, with an old mtime."""
    secret = tmp_path / "root-only"
    secret.write_bytes(b"root only: must never be written by hvdump\n")
    secret.chmod(0o600)
    os.utime(secret, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    return secret, FileState.of(secret)


def _listing(d: Path) -> dict[str, tuple[int, int, int, str]]:
    """Names in ``d`` with (mode, uid, size, link target)."""
    out = {}
    for name in sorted(os.listdir(d)):
        st = os.lstat(d / name)
        target = os.readlink(d / name) if os.path.islink(d / name) else ""
        out[name] = (st.st_mode, st.st_uid, st.st_size, target)
    return out


def _refused(lpar: Lpar, root: Path, out: Path, *extra: str) -> list[str]:
    """``hvdump collect`` refuses in one line and nothing is released (hvsim's record)."""
    res = hvdump("collect", "--root", str(root), "-o", str(out), "--chunk-size", CHUNK, *extra)
    problems = []
    lines = res.stderr.strip().splitlines()
    if res.returncode != 1 or len(lines) != 1 or not lines[0].startswith("hvdump: error: "):
        problems.append(
            f"not refused in one line: rc {res.returncode} {res.stdout!r} {res.stderr!r}"
        )
    if "Traceback" in res.stderr:
        problems.append("traceback")
    problems += _nothing_released(lpar)
    return problems


@needs_fuse
@pytest.mark.fuse
def test_planted_links_and_untrusted_directories_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Links at the names the collector opens, DIR a link, DIR not the caller's own or
    writable by others: refused in one line, nothing released, nothing outside DIR (nor
    in a foreign DIR) touched. Temporary names (predictable in-process: they carry the
    pid) are removed, never followed, and the run completes."""
    monkeypatch.setenv("HVDUMP_RUNTIME_DIR", str(tmp_path / "run"))
    counts: collections.Counter[str] = collections.Counter()
    problems: list[str] = []
    secret, before = _secret(tmp_path)

    def secret_intact(what: str) -> None:
        now = FileState.of(secret)
        if now != before:
            problems.append(f"{what}: the file outside DIR changed: {before} -> {now}")
            counts["outside_file_changed"] += 1

    lpar = make_lpar(tmp_path / "lpar", memory=MEMORY, quirks="faithful", seed=SEED + 2)
    with mounted(lpar, tmp_path / "root") as root:
        # one planted link at a time, then all of them at once
        for names in [[n] for n in CREATED] + [CREATED]:
            what = "all names" if len(names) > 1 else names[0]
            d = tmp_path / f"links-{len(names)}-{names[0]}"
            d.mkdir(mode=0o700)
            for n in names:
                os.symlink(secret, d / n)
            listing = _listing(d)
            extra = ("--format", "elf") if names == ["dump.elf"] else ()
            got = _refused(lpar, root, d, *extra)
            counts["scenarios"] += 1
            problems += [f"link {what}: {p}" for p in got]
            if _listing(d) != listing:
                problems.append(f"link {what}: DIR changed: {listing} -> {_listing(d)}")
            secret_intact(f"link {what}")
            if lpar.state != "capture":  # not refused: the run went on
                _recrash(lpar)

        # DIR itself a link: to a directory of ours, to the secret, dangling
        real = tmp_path / "real-dir"
        real.mkdir(mode=0o700)
        for what, target in (
            ("to a directory", real),
            ("to a file", secret),
            ("dangling", tmp_path / "nowhere"),
        ):
            link = tmp_path / f"dir-link-{what.replace(' ', '-')}"
            os.symlink(target, link)
            got = _refused(lpar, root, link)
            counts["scenarios"] += 1
            problems += [f"DIR a link {what}: {p}" for p in got]
            if os.listdir(real) or (tmp_path / "nowhere").exists():
                problems.append(f"DIR a link {what}: created through the link")
            secret_intact(f"DIR a link {what}")

        # DIR exists and is not ours alone
        for what, mode, uid in (
            ("owned by nobody", 0o700, NOBODY),
            ("owned by nobody, 0777", 0o777, NOBODY),
            ("group-writable", 0o770, 0),
            ("world-writable", 0o777, 0),
            ("world-writable, sticky", 0o1777, 0),
        ):
            d = tmp_path / f"dir-{what.replace(' ', '-').replace(',', '')}"
            d.mkdir()
            os.chmod(d, mode)
            os.chown(d, uid, uid)
            st0 = os.lstat(d)
            got = _refused(lpar, root, d)
            counts["scenarios"] += 1
            problems += [f"DIR {what}: {p}" for p in got]
            st1 = os.lstat(d)
            if os.listdir(d):
                problems.append(f"DIR {what}: created {os.listdir(d)} in it")
            if (st1.st_mode, st1.st_uid) != (st0.st_mode, st0.st_uid):
                problems.append(
                    f"DIR {what}: mode/owner changed {st0.st_mode:o} -> {st1.st_mode:o}"
                )
            secret_intact(f"DIR {what}")

        # Temporary names, planted in DIR and in the runtime directory
        assert lpar.state == "capture"
        d = tmp_path / "tmp-names"
        d.mkdir(mode=0o700)
        pid = os.getpid()
        planted = [d / f".{n}.{pid}.tmp" for n in ("manifest.json", "plan.json")]
        reg = registration_path(root)
        reg.parent.mkdir(mode=0o700, exist_ok=True)
        planted.append(reg.with_name(f".{reg.name}.{pid}.tmp"))
        for p in planted:
            os.symlink(secret, p)
        collect(CollectOptions(root=root, output=d, chunk_size=16 << 20))
        counts["scenarios"] += 1
        left = [p.name for p in planted if os.path.lexists(p)]
        if left:
            problems.append(f"temporary links left in place: {left}")
        problems += [f"temp names: {p}" for p in _check_collected(lpar, root, d, counts, 1)]
        secret_intact("temporary names")
    counts["pages_lost"] += _pages_lost(lpar)
    _report(capsys, "planted links and untrusted directories", counts)
    assert problems == [], "\n".join(problems)


@needs_fuse
@pytest.mark.fuse
def test_planted_plan_json_link_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A link planted as DIR/plan.json is refused like the other names (a directory
    with files but no journal that wrote them is not a collection's)."""
    monkeypatch.setenv("HVDUMP_RUNTIME_DIR", str(tmp_path / "run"))
    counts: collections.Counter[str] = collections.Counter()
    secret, before = _secret(tmp_path)
    lpar = make_lpar(tmp_path / "lpar", memory=MEMORY, quirks="faithful", seed=SEED + 3)
    with mounted(lpar, tmp_path / "root") as root:
        d = tmp_path / "links-plan"
        d.mkdir(mode=0o700)
        os.symlink(secret, d / "plan.json")
        problems = _refused(lpar, root, d)
        counts["scenarios"] += 1
        assert FileState.of(secret) == before, "the file the link names was changed"
        if lpar.state == "running":  # it collected: the dump is right at least
            assert _check_collected(lpar, root, d, counts, 1) == []
    _report(capsys, "planted plan.json link", counts)
    assert problems == [], problems


# -- 3. the runtime registry --------------------------------------------------------------------


class _Stop(Exception):
    """Stands for a collector killed at a hook point."""


def _stop_after_release(n: int) -> Callable[[str, int], None]:
    seen = [0]

    def hook(event: str, _i: int) -> None:
        if event == "release":
            seen[0] += 1
            if seen[0] == n:
                raise _Stop(f"release {n}")

    return hook


def _partial_collection(lpar: Lpar, mnt: Path, out: Path) -> tuple[str, bytes]:
    """Collect ``lpar`` into ``out`` until 4 releases are made, then stop as kill -9
    would; the identity and the registry entry it leaves."""
    with mounted(lpar, mnt) as root:
        identity = _live_identity(root)
        opts = CollectOptions(root=root, output=out, chunk_size=16 << 20)
        opts.hook = _stop_after_release(4)
        with pytest.raises(_Stop):
            collect(opts)
        assert released_before_durable(lpar, out, lpar.config.page_size) == []
        entry, why = read_registration(root)
        assert entry is not None and entry["identity"] == identity, (entry, why)
        stale = registration_path(root).read_bytes()
    return identity, stale


def _leave_stale(mnt: Path, stale: bytes) -> None:
    """hvsim's umount forgets the entry; a root unmounted by other means (fusermount3
    -u, a daemon that died, a host reboot with the runtime directory on disk) leaves it."""
    path = registration_path(mnt)
    path.parent.mkdir(mode=0o700, exist_ok=True)
    path.write_bytes(stale)
    path.chmod(0o600)


def _released_saved_range(out: Path, size: int = 4 << 20) -> tuple[int, int]:
    """``(pa, size)``: crashed memory the collection in ``out`` saved and whose
    ``/proc/vmcore`` source it released (the first releases free the scratch area's
    copy of low memory: ``pa`` is the chunk's destination)."""
    cv = CollectionView(out)
    cv.refresh()
    for ch in cv.chunks:
        if (
            ch.kind in ("rmo", "mem")
            and ch.size >= size
            and ch.index in cv.durable_chunks
            and cv.released.contains(ch.src, ch.src + size)
        ):
            return ch.dst, size
    raise AssertionError(f"no released, saved range of {size:#x} bytes in {out}")


@contextlib.contextmanager
def _live(root: Path) -> Iterator[DumpSource]:
    src = identify(root / "proc/vmcore")
    assert src is not None and src.kind == "live", src
    try:
        yield src
    finally:
        src.close()


def _booted(path: Path, seed: int) -> Lpar:
    return Lpar.create(path, boot=True, memory=MEMORY, mix=FAST_MIX, quirks="faithful", seed=seed)


def _crash_in_one_second(*lpars: Lpar) -> None:
    """Crash every LPAR within one second of the clock (one CRASHTIME)."""
    _wait_for(lambda: time.time() % 1 < 0.3, timeout=2, step=0.01)
    for lpar in lpars:
        lpar.crash()
    times = {lpar.last_dump().crash_time for lpar in lpars}  # type: ignore[union-attr]
    assert len(times) == 1, times


def _crash_after(lpar: Lpar, other: Lpar) -> None:
    """Crash ``lpar`` in a later second of the clock than ``other`` crashed."""
    t = other.last_dump().crash_time  # type: ignore[union-attr]
    _wait_for(lambda: int(time.time()) > t, timeout=3, step=0.01)
    lpar.crash()


def _check_stale_entry(
    root: Path,
    out_a: Path,
    id_b: str,
    truth_a: bytes,
    truth_b: bytes,
    pa: int,
    counts: collections.Counter[str],
) -> list[str]:
    """A's entry at B's mount point: ignored with a warning, B's own bytes served."""
    problems: list[str] = []
    counts["scenarios"] += 1
    assert find_collection(root) == out_a  # control: the entry is there and names A's output
    warnings: list[str] = []
    if find_collection(root, id_b, warnings) is not None:
        problems.append("find_collection(root, identity) used the stale entry")
    if not any("another dump" in w for w in warnings):
        problems.append(f"find_collection gave no warning: {warnings}")
    with _live(root) as src:
        got = bytes(src.read(pa, len(truth_b)))
        if src.collection is not None:
            problems.append(f"the plugin attached {src.collection.out}")
        if not any("another dump" in w for w in src.warnings):
            problems.append(f"the plugin gave no warning: {src.warnings}")
    if got != truth_b:
        counts["wrong_bytes_served"] += 1
        problems.append(
            f"the plugin served {'the other LPAR' if got == truth_a else 'wrong'}'s bytes "
            f"at {pa:#x}"
        )
    return problems


@needs_fuse
@pytest.mark.fuse
def test_registry_entries_of_others_are_ignored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stale entry of another LPAR once mounted at the same path, an entry in a runtime
    directory (or file) of another user, a runtime directory open to others or a link,
    /tmp/hvdump-UID made by another user: ignored with a warning; find_collection
    returns None and the plugin's live source serves the live dump's own bytes."""
    counts: collections.Counter[str] = collections.Counter()
    problems: list[str] = []
    monkeypatch.setenv("HVDUMP_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.delenv("HVDUMP_OUTPUT", raising=False)
    mnt = tmp_path / "root"
    # Two LPARs of the same size, other memory, crashed in different seconds.
    lpar_a = _booted(tmp_path / "lpar-a", SEED + 10)
    lpar_b = _booted(tmp_path / "lpar-b", SEED + 11)
    lpar_a.crash()
    _crash_after(lpar_b, lpar_a)
    out_a = tmp_path / "out-a"
    id_a, stale = _partial_collection(lpar_a, mnt, out_a)
    _leave_stale(mnt, stale)
    pa, size = _released_saved_range(out_a)
    truth_a, truth_b = lpar_a.expected(pa, size), lpar_b.expected(pa, size)
    assert truth_a != truth_b, "the two LPARs hold the same bytes: the test would prove nothing"

    with mounted(lpar_b, mnt) as root:
        id_b = _live_identity(root)
        assert id_b != id_a
        # (1) the stale entry of LPAR A at the same mount point
        problems += [
            f"stale entry: {p}"
            for p in _check_stale_entry(root, out_a, id_b, truth_a, truth_b, pa, counts)
        ]

        # An attacker's collection claiming the live dump (B's identity and header) and
        # holding A's bytes: served if its entry were trusted.
        evil = tmp_path / "evil-out"
        shutil.copytree(out_a, evil)
        plan = json.loads((evil / "plan.json").read_text())
        with _live(root) as src:
            assert src.header is not None
            header_b = build_dump_header(src.header).hex()
        plan.update(root=os.path.realpath(root), identity=id_b, header=header_b)
        (evil / "plan.json").write_text(json.dumps(plan))
        fake = {
            "root": os.path.realpath(root),
            "output": str(evil),
            "identity": id_b,
            "pid": 1,
            "uid": NOBODY,
            "since": time.time(),
        }

        def plant(run_dir: Path, *, dir_uid: int, file_uid: int, dir_mode: int = 0o700) -> None:
            shutil.rmtree(run_dir, ignore_errors=True)
            run_dir.mkdir(mode=0o700)
            monkeypatch.setenv("HVDUMP_RUNTIME_DIR", str(run_dir))
            path = registration_path(root)
            path.write_text(json.dumps(fake))
            path.chmod(0o600)
            os.chown(path, file_uid, file_uid)
            os.chmod(run_dir, dir_mode)
            os.chown(run_dir, dir_uid, dir_uid)

        def ignored(what: str, want_warning: str) -> None:
            counts["scenarios"] += 1
            warnings: list[str] = []
            if find_collection(root, id_b, warnings) is not None or find_collection(root):
                problems.append(f"{what}: find_collection used the entry")
            if not any(want_warning in w for w in warnings):
                problems.append(f"{what}: no warning naming {want_warning!r}: {warnings}")
            with _live(root) as src:
                got = bytes(src.read(pa, size))
                if src.collection is not None:
                    problems.append(f"{what}: the plugin attached {src.collection.out}")
                if not any(want_warning in w for w in src.warnings):
                    problems.append(f"{what}: the plugin gave no warning: {src.warnings}")
            if got != truth_b:
                counts["wrong_bytes_served"] += 1
                problems.append(f"{what}: the plugin served the attacker's bytes")

        # (2) a runtime directory (HVDUMP_RUNTIME_DIR) that belongs to another user
        foreign = tmp_path / "run-foreign"
        plant(foreign, dir_uid=NOBODY, file_uid=NOBODY)
        listing = _listing(foreign)
        ignored("runtime dir of uid 65534", f"uid {NOBODY}")
        why = register_collection(root, tmp_path / "ours", id_b, time.time())
        if not why or _listing(foreign) != listing:
            problems.append(f"registered into another user's runtime dir: {why!r}")
        # (3) our own runtime directory, an entry file of another user's
        plant(tmp_path / "run-file", dir_uid=0, file_uid=NOBODY)
        ignored("entry of uid 65534 in our runtime dir", f"uid {NOBODY}")
        # (4) our own runtime directory, open to others
        plant(tmp_path / "run-open", dir_uid=0, file_uid=0, dir_mode=0o777)
        ignored("runtime dir mode 0777", "open to other users")
        # (5) the runtime directory a link to another user's directory
        target = tmp_path / "run-target"
        plant(target, dir_uid=NOBODY, file_uid=NOBODY)
        os.symlink(target, tmp_path / "run-link")
        monkeypatch.setenv("HVDUMP_RUNTIME_DIR", str(tmp_path / "run-link"))
        ignored("runtime dir a link", "not a directory")

        # control: the same entry in a trusted directory is used, so the refusals above
        # are what kept the attacker's bytes out
        plant(tmp_path / "run-ours", dir_uid=0, file_uid=0)
        with _live(root) as src:
            attached = src.collection.out if src.collection is not None else None
            got = bytes(src.read(pa, size))
        assert attached == evil and got == truth_a, "control: a trusted entry is not used"
    # (6) /tmp/hvdump-UID (no HVDUMP_RUNTIME_DIR, no XDG_RUNTIME_DIR) made by another user
    problems += _tmp_fallback_foreign(tmp_path, monkeypatch, counts)
    counts["pages_lost"] += _pages_lost(lpar_b)
    if lpar_b.released_ranges():
        problems.append(f"LPAR B released {lpar_b.released_ranges()}")
    _report(capsys, "registry entries of others", counts)
    assert problems == [], "\n".join(problems)


_VICTIM = 61234  # an unused uid: the victim of a /tmp/hvdump-UID that root created


def _tmp_fallback_foreign(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, counts: collections.Counter[str]
) -> list[str]:
    """``/tmp/hvdump-UID`` created by another user (here root) for a victim without a
    runtime directory: the victim ignores its entry and does not register into it."""
    problems: list[str] = []
    d = Path(f"/tmp/hvdump-{_VICTIM}")
    shutil.rmtree(d, ignore_errors=True)
    fake_root = tmp_path / "victim-root"
    identity = "5" * 32
    d.mkdir(mode=0o755)
    try:
        monkeypatch.delenv("HVDUMP_RUNTIME_DIR")
        monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
        with monkeypatch.context() as m:
            m.setattr(os, "geteuid", lambda: _VICTIM)
            path = registration_path(fake_root)
        assert path.parent == d, path
        entry = {"root": os.path.realpath(fake_root), "output": str(tmp_path), "identity": identity}
        path.write_text(json.dumps({**entry, "pid": 1}))
        path.chmod(0o644)
        before = sorted(os.listdir(d))
        setpriv = shutil.which("setpriv")
        if setpriv:  # a real process of the victim's uid
            code = (
                "import json, sys, time\n"
                "from drgn_hvdump.dumpdir.registry import find_collection, "
                "register_collection\n"
                "w = []\n"
                "found = find_collection(sys.argv[1], sys.argv[2], w)\n"
                "why = register_collection(sys.argv[1], sys.argv[1], sys.argv[2], time.time())\n"
                "print(json.dumps({'found': found and str(found), 'warnings': w, 'why': why}))\n"
            )
            ids = [f"--reuid={_VICTIM}", f"--regid={_VICTIM}", "--clear-groups"]
            res = subprocess.run(
                [setpriv, *ids, sys.executable, "-c", code, str(fake_root), identity],
                capture_output=True,
                text=True,
                env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(PROJECT), "HOME": "/"},
                timeout=120,
                cwd="/",
            )
            counts["scenarios"] += 1
            if res.returncode != 0:
                problems.append(f"/tmp fallback as uid {_VICTIM}: {res.stderr[-500:]}")
            else:
                got = json.loads(res.stdout)
                if got["found"] is not None or not any("uid 0" in w for w in got["warnings"]):
                    problems.append(f"/tmp fallback as uid {_VICTIM}: used, or no warning: {got}")
                if not got["why"]:
                    problems.append(f"/tmp fallback as uid {_VICTIM}: registered into it")
        # the same in this process, as the victim's uid sees it
        with monkeypatch.context() as m:
            m.setattr(os, "geteuid", lambda: _VICTIM)
            counts["scenarios"] += 1
            w: list[str] = []
            if find_collection(fake_root, identity, w) is not None or not any(
                "uid 0" in x for x in w
            ):
                problems.append(f"/tmp fallback (in-process): used, or no warning: {w}")
            if not register_collection(fake_root, fake_root, identity, time.time()):
                problems.append("/tmp fallback (in-process): registered into it")
        if sorted(os.listdir(d)) != before:
            problems.append(f"/tmp fallback: {d} changed: {before} -> {sorted(os.listdir(d))}")
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return problems


@needs_fuse
@pytest.mark.fuse
def test_lpars_crashed_in_the_same_second_are_other_dumps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two LPARs of one configuration (one kernel build) that crash within the same
    second share header and VMCOREINFO; the device tree's partition name (part of the
    identity) tells them apart, so (1) a stale registry entry of one at the other's
    mount point is ignored with a warning and the plugin serves the right LPAR's
    bytes, and (2) ``hvdump collect -o DIR`` with the other LPAR's partial journal in
    DIR is refused ("another dump"), nothing released."""
    monkeypatch.setenv("HVDUMP_RUNTIME_DIR", str(tmp_path / "run"))
    counts: collections.Counter[str] = collections.Counter()
    problems: list[str] = []
    mnt = tmp_path / "root"
    lpar_a = _booted(tmp_path / "lpar-a", SEED + 20)
    lpar_b = _booted(tmp_path / "lpar-b", SEED + 21)
    _crash_in_one_second(lpar_a, lpar_b)
    out_a = tmp_path / "out-a"
    _, stale = _partial_collection(lpar_a, mnt, out_a)
    _leave_stale(mnt, stale)
    pa, size = _released_saved_range(out_a)
    truth_a, truth_b = lpar_a.expected(pa, size), lpar_b.expected(pa, size)
    assert truth_a != truth_b
    with mounted(lpar_b, mnt) as root:
        id_b = _live_identity(root)
        # (1) the plugin
        problems += [
            f"stale entry: {p}"
            for p in _check_stale_entry(root, out_a, id_b, truth_a, truth_b, pa, counts)
        ]
        # (2) the collector, given A's directory
        res = hvdump("collect", "--root", str(root), "-o", str(out_a), "--chunk-size", CHUNK)
        counts["scenarios"] += 1
        if res.returncode == 0:
            wrong = _wrong_pages(lpar_b, out_a)
            verified = hvdump("verify", str(out_a)).returncode == 0
            counts["wrong_pages_saved"] += wrong
            if wrong:
                counts["false_collected_or_ok"] += 1 + int(verified)
                problems.append(
                    f"resumed another LPAR's journal: {res.stdout.splitlines()[0]!r}, "
                    f"{wrong} wrong pages, hvdump verify {'OK' if verified else 'fails'}"
                )
        elif "another dump" not in res.stderr or _nothing_released(lpar_b):
            problems.append(f"collect: rc {res.returncode} {res.stderr!r}")
    _report(capsys, "LPARs crashed in the same second", counts)
    assert problems == [], "\n".join(problems)


# -- 4. SIGTERM -----------------------------------------------------------------------------------


def _under_way(proc: subprocess.Popen[str], lock: Path) -> bool:
    """Ended, or holding the dump's lock (its SIGTERM handler installed by then)."""
    return proc.poll() is not None or proc.pid in flock_holders(lock)


@needs_fuse
@pytest.mark.fuse
@pytest.mark.slow
def test_sigterm_is_one_line_and_resumable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM at random moments (kdump and ELF): exit 143, one line, no traceback,
    nothing released before it is durable; the rerun resumes and completes, the LPAR
    ends protected, the dump matches the crashed memory and verifies."""
    monkeypatch.setenv("HVDUMP_RUNTIME_DIR", str(tmp_path / "run"))
    rng = random.Random(SEED + 4)
    counts: collections.Counter[str] = collections.Counter()
    problems: list[str] = []
    per_format = int(os.environ.get("HVDUMP_SIGTERM_PER_FORMAT", "4"))
    lpar = make_lpar(tmp_path / "lpar", memory=MEMORY, quirks="faithful", seed=SEED + 4)
    with mounted(lpar, tmp_path / "root") as root:
        lock = root / "sys/kernel/release_region"
        for fmt in ("kdump", "elf"):
            out = tmp_path / f"out-{fmt}"
            terms = 0
            for _attempt in range(40):
                r = _launch(root, out, "--format", fmt, "--threads", str(1 + terms % 2))
                # Under way (its SIGTERM handler installed) once it holds the dump's lock.
                _wait_for(functools.partial(_under_way, r.proc, lock))
                sent = False
                if terms < per_format:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        r.proc.wait(timeout=rng.uniform(0.0, 2.0))
                    if r.proc.poll() is None:
                        r.proc.send_signal(signal.SIGTERM)
                        sent = True
                r.stdout, r.stderr = r.proc.communicate(timeout=300)
                if sent and not r.collected:
                    terms += 1
                    counts["scenarios"] += 1
                    lines = r.err_lines
                    if not (
                        r.rc == 128 + signal.SIGTERM
                        and len(lines) == 1
                        and "interrupted by SIGTERM" in lines[0]
                        and "Traceback" not in r.stderr
                    ):
                        problems.append(f"{fmt} SIGTERM {terms}: rc {r.rc} {r.stderr[-6000:]!r}")
                    early = released_before_durable(lpar, out, lpar.config.page_size)
                    counts["unsaved_releases"] += len(early)
                    if early:
                        problems.append(f"{fmt} SIGTERM {terms}: released early {early[:3]}")
                    if lpar.state != "capture":
                        counts["sigterm_after_the_last_release"] += 1
                    continue
                # A SIGTERM after the journal's last record but before the summary was
                # printed: the rerun finds the collection complete and says so.
                done = r.rc == 0 and "already collected" in r.stderr
                if not r.collected and not done:
                    problems.append(f"{fmt} rerun: rc {r.rc} {r.stdout!r} {r.stderr!r}")
                    break
                if terms and not done and "(resumed)" not in r.stdout:
                    problems.append(f"{fmt} rerun after SIGTERM did not resume: {r.stdout!r}")
                problems += [f"{fmt}: {p}" for p in _check_collected(lpar, root, out, counts, 1)]
                break
            else:
                problems.append(f"{fmt}: never completed")
            counts[f"sigterm_{fmt}"] += terms
            if lpar.state != "capture":
                _recrash(lpar)
    _report(capsys, "SIGTERM", counts)
    assert problems == [], "\n".join(problems)
