"""Shared helpers of the Ansible tests (no tests here): fleets, ansible-playbook runs, a loopback sshd."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.sshd_support import SSHD

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
ANSIBLE_PLAYBOOK = BIN / "ansible-playbook"


def have_fuse() -> bool:
    return os.path.exists("/dev/fuse") and shutil.which("fusermount3") is not None


needs_ansible = pytest.mark.skipif(
    not ANSIBLE_PLAYBOOK.exists() or not have_fuse(),
    reason="needs ansible-core in the venv and FUSE",
)
needs_sshd = pytest.mark.skipif(
    not SSHD.exists() or shutil.which("rsync") is None, reason="needs openssh-server and rsync"
)


def ansible_env(home: Path) -> dict[str, str]:
    """An environment with its own ANSIBLE_HOME, temp and async folders (tests run in parallel)."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    for sub in ("tmp", "async", "remote"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    env.update(
        ANSIBLE_HOME=str(home),
        ANSIBLE_LOCAL_TEMP=str(home / "tmp"),
        ANSIBLE_REMOTE_TEMP=str(home / "remote"),
        ANSIBLE_ASYNC_DIR=str(home / "async"),
        ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
    )
    return env


def run_playbook(
    playbook: str,
    inventory: Path,
    home: Path,
    *extra: str,
    check: bool = False,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    cmd = [str(ANSIBLE_PLAYBOOK), str(REPO / "playbooks" / playbook), "-i", str(inventory), *extra]
    if check:
        cmd.append("--check")
    return subprocess.run(
        cmd,
        cwd=REPO,
        env=ansible_env(home),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def recap(output: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP as {host: {ok, changed, unreachable, failed, skipped, rescued, ignored}}."""
    out: dict[str, dict[str, int]] = {}
    text = output[output.rfind("PLAY RECAP") :]
    for line in text.splitlines()[1:]:
        if ":" not in line:
            continue
        host, _, rest = line.partition(":")
        fields = dict(kv.split("=") for kv in rest.split())
        out[host.strip()] = {k: int(v) for k, v in fields.items()}
    return out


def summary_lines(output: str) -> list[str]:
    """The operator summary lines the report play printed."""
    start = output.find('"hvdump collection summary')
    if start < 0:
        start = output.find('"hvdump status')
    lines = []
    for raw in output[start:].splitlines():
        if raw.strip() == "]":
            break
        lines.append(json.loads(raw.strip().rstrip(",")))
    return lines


@contextlib.contextmanager
def fleet(directory: Path, count: int, **kwargs: Any) -> Iterator[list[Any]]:
    from hvsim.fleet import fleet_down, fleet_up

    hosts = fleet_up(directory, count, **kwargs)
    try:
        yield hosts
    finally:
        fleet_down(directory, remove=False)
