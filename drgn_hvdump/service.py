"""The capture-boot service: ``hvdump service run|install|status``.

When an LPAR boots after a crash with a dump waiting (hypervisor-assisted
dump or fadump, whichever the capture interface finds under the root), the
systemd unit ``hvdump-capture.service`` runs ``hvdump service run``: it
collects the dump as the configuration file says (``/etc/hvdump/hvdump.toml``:
output directory, codec, dump level, release policy, archive host, what to do
on failure), releasing memory range by range as each range is durable;
the collector registers the LPAR again for the next crash. Progress goes to the
journal, one line every ``progress_interval`` seconds. In a boot with no dump
waiting it says so and exits 0: the unit is safe to leave enabled.

On failure the memory stays reserved (``on_failure = "keep"``, the default):
the dump is not lost, the unit fails, and ``hvdump collect`` with the same
output resumes it. ``on_failure = "give-up"`` hands the memory back without
the dump: production first, for fleets that choose it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import socket
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drgn_hvdump.clitools import existing_root
from drgn_hvdump.collect.ownership import DumpBusyError
from drgn_hvdump.dumpdir.names import JOURNAL
from drgn_hvdump.errors import HvdumpError

__all__ = [
    "CONFIG_PATH",
    "UNIT_NAME",
    "ServiceConfig",
    "add_subcommand",
    "load_config",
    "render_unit",
    "run",
]

CONFIG_PATH = Path("/etc/hvdump/hvdump.toml")
UNIT_NAME = "hvdump-capture.service"
UNIT_DIR = Path("/etc/systemd/system")

_FORMATS = ("kdump", "elf")
_CODECS = ("zstd", "zlib", "lzo", "snappy", "none")
_RELEASE = ("progressive", "at-end", "never")
_ON_FAILURE = ("keep", "give-up")

DEFAULT_CONFIG = """\
# hvdump capture-boot service (hvdump-capture.service): what to do when the LPAR
# boots with a dump waiting. Read by `hvdump service run`; check it with
# `hvdump service status`.

[collect]
# Each dump goes to OUTPUT/HOST-YYYYmmdd-HHMMSS (the crash time), created 0700.
output = "/var/crash/hvdump"
# kdump (kdump-compressed, as makedumpfile writes) or elf (a sparse ELF core).
format = "kdump"
# Page codec of the kdump file: zstd, zlib, lzo, snappy or none.
compress = "zstd"
# makedumpfile's -d: 1 zero pages only; 31 also page cache, user and free pages.
dump_level = 1
# progressive: memory goes back to production as each range is durable;
# at-end: all of it once the dump is complete; never: keep it reserved.
release = "progressive"
threads = 2

[archive]
# ssh://[user@]host[:port]/path: collect straight to an archive host (hvdump
# receive runs there; memory is released once the host has every page).
# Empty: keep the dump in [collect] output.
target = ""
# An ssh key and -o options for the archive host (BatchMode is always on).
identity = ""
ssh_options = []
# When the archive host cannot be used: collect into [collect] output instead.
fallback_local = true

[service]
# keep: on failure the memory stays reserved and the unit fails (run
#   `hvdump collect` with the same output to resume); give-up: hand the memory
#   back without the dump.
on_failure = "keep"
# Seconds between progress lines in the journal.
progress_interval = 30
"""


@dataclass
class ServiceConfig:
    """The configuration file, checked."""

    output: Path = Path("/var/crash/hvdump")
    format: str = "kdump"
    compress: str = "zstd"
    dump_level: int = 1
    release: str = "progressive"
    threads: int = 2
    archive: str = ""
    identity: str = ""
    ssh_options: list[str] = dataclasses.field(default_factory=list)
    fallback_local: bool = True
    on_failure: str = "keep"
    progress_interval: float = 30.0


_KEYS: dict[str, dict[str, tuple[str, type]]] = {
    "collect": {
        "output": ("output", str),
        "format": ("format", str),
        "compress": ("compress", str),
        "dump_level": ("dump_level", int),
        "release": ("release", str),
        "threads": ("threads", int),
    },
    "archive": {
        "target": ("archive", str),
        "identity": ("identity", str),
        "ssh_options": ("ssh_options", list),
        "fallback_local": ("fallback_local", bool),
    },
    "service": {
        "on_failure": ("on_failure", str),
        "progress_interval": ("progress_interval", float),
    },
}
"""TOML table -> key -> (field, type): the one description the reader checks against."""


def _problem(path: Path, what: str) -> HvdumpError:
    return HvdumpError(f"{path}: {what}; fix it and check with: hvdump service status")


def parse_config(text: str, path: Path) -> ServiceConfig:
    """``text`` (TOML) as a :class:`ServiceConfig`; HvdumpError naming the key."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _problem(path, f"not valid TOML ({exc})") from None
    values: dict[str, Any] = {}
    for table, body in data.items():
        keys = _KEYS.get(table)
        if keys is None or not isinstance(body, dict):
            raise _problem(path, f"unknown table [{table}] (known: {', '.join(_KEYS)})")
        for key, value in body.items():
            if key not in keys:
                raise _problem(path, f"[{table}] has no key {key!r} (known: {', '.join(keys)})")
            name, kind = keys[key]
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise _problem(path, f"[{table}] {key} must be a {kind.__name__}")
            values[name] = value
    cfg = ServiceConfig(**values)
    cfg.output = Path(str(values.get("output", cfg.output)))
    checks = [
        (cfg.format in _FORMATS, f"[collect] format {cfg.format!r}: one of {_FORMATS}"),
        (cfg.compress in _CODECS, f"[collect] compress {cfg.compress!r}: one of {_CODECS}"),
        (0 <= cfg.dump_level <= 31, f"[collect] dump_level {cfg.dump_level}: 0 to 31"),
        (cfg.release in _RELEASE, f"[collect] release {cfg.release!r}: one of {_RELEASE}"),
        (cfg.threads >= 1, f"[collect] threads {cfg.threads}: 1 or more"),
        (cfg.output.is_absolute(), f"[collect] output {str(cfg.output)!r}: an absolute path"),
        (
            not cfg.archive or cfg.archive.startswith("ssh://"),
            f"[archive] target {cfg.archive!r}: ssh://[user@]host[:port]/path or empty",
        ),
        (
            cfg.on_failure in _ON_FAILURE,
            f"[service] on_failure {cfg.on_failure!r}: one of {_ON_FAILURE}",
        ),
        (cfg.progress_interval > 0, "[service] progress_interval: more than 0"),
        (all(isinstance(o, str) for o in cfg.ssh_options), "[archive] ssh_options: strings"),
    ]
    for ok, what in checks:
        if not ok:
            raise _problem(path, what)
    return cfg


def load_config(path: Path) -> ServiceConfig:
    """The configuration at ``path``; the defaults when it does not exist."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ServiceConfig()
    except UnicodeDecodeError:
        raise _problem(path, "not UTF-8 text") from None
    return parse_config(text, path)


def _log(msg: str) -> None:
    # systemd's journal takes stdout line by line; <N> is the syslog priority.
    print(msg, flush=True)


class _JournalProgress:
    """The collector's hook: a line every ``interval`` seconds, not a progress bar."""

    def __init__(self, total: int, chunk_size: int, interval: float) -> None:
        self.total = max(total, 1)
        self.chunk_size = chunk_size
        self.interval = interval
        self.chunks = 0
        self.releases = 0
        self.start = time.monotonic()
        self.last = self.start

    def __call__(self, event: str, _index: int) -> None:
        if event == "chunk":
            self.chunks += 1
        elif event == "release":
            self.releases += 1
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            done = min(self.chunks * self.chunk_size, self.total)
            _log(
                f"progress: {100 * done / self.total:.0f}% read "
                f"({done >> 20} of {self.total >> 20} MiB), "
                f"{self.releases} ranges back to production, {now - self.start:.0f} s"
            )


def _archive_url(cfg: ServiceConfig, dump_id: str) -> str:
    return f"{cfg.archive.rstrip('/')}/{dump_id}"


def _ssh(cfg: ServiceConfig) -> tuple[str, ...]:
    return ("ssh", *(a for o in cfg.ssh_options for a in ("-o", o)))


def run(root: Path, config: Path) -> int:
    """Collect the waiting dump under ``root`` as ``config`` says; the exit status."""
    from drgn_hvdump import api
    from drgn_hvdump.collect.collector import CollectOptions, collect

    cfg = load_config(config)
    facts = api.facts(root)
    if not facts["dump_waiting"]:
        _log(f"no dump waiting ({facts['interface']}: {facts['reason']}); nothing to do")
        return 0
    name = api.dump_id(socket.gethostname(), facts)
    reserved = int(facts.get("reserved_bytes") or 0)
    _log(
        f"{facts['interface']} dump waiting: {reserved / (1 << 30):.2f} GiB reserved, "
        f"kernel {facts.get('osrelease') or 'unknown'}; collecting as {name}"
    )
    outputs: list[Any] = []
    local = cfg.output / name
    if (local / JOURNAL).exists():
        # An earlier run of this boot stopped there: resume it, wherever the
        # archive setting points now (released ranges are only in that journal).
        _log(f"resuming the collection in {local}")
        outputs.append(local)
    elif cfg.archive:
        from drgn_hvdump.dumpdir.remote import SshTarget

        url = _archive_url(cfg, name)
        identity = cfg.identity or None
        try:
            api.check_target(url, ssh=_ssh(cfg), identity=identity)
            outputs.append(SshTarget.parse(url, ssh=_ssh(cfg), identity=identity))
        except HvdumpError as exc:
            _log(f"archive host cannot be used: {exc}")
            if not cfg.fallback_local:
                return _failed(root, cfg, "the archive host cannot be used")
    if not outputs:
        cfg.output.mkdir(mode=0o700, parents=True, exist_ok=True)
        outputs.append(local)
    opts = CollectOptions(
        root=root,
        output=outputs[0],
        format=cfg.format,
        compress=cfg.compress,
        release=cfg.release,
        threads=cfg.threads,
        dump_level=max(cfg.dump_level, 1),
        progress=False,
    )
    total = int(facts.get("dump_bytes") or reserved)
    opts.hook = _JournalProgress(total, opts.chunk_size, cfg.progress_interval)
    try:
        result = collect(opts)
    except DumpBusyError as busy:
        # Someone is collecting it (an operator, a playbook): theirs to finish.
        _log(f"another collector holds the dump, leaving it to it: {busy}")
        return 0
    except (HvdumpError, OSError) as exc:
        _log(f"collection failed: {exc}")
        return _failed(root, cfg, str(exc), opts.output)
    m = result.manifest
    size = f", {m.dump.size / (1 << 30):.2f} GiB" if m is not None else ""
    after = api.facts(root)
    _log(
        f"collected into {result.output}{size}; "
        f"{int(after.get('reserved_bytes') or 0) / (1 << 30):.2f} GiB still reserved; "
        f"registered for the next crash: {'yes' if after.get('registered') else 'no'}"
    )
    return 0


def _failed(root: Path, cfg: ServiceConfig, why: str, output: object = None) -> int:
    from drgn_hvdump import api

    if cfg.on_failure == "give-up":
        try:
            released = api.abandon(root)
        except DumpBusyError as busy:
            _log(f"on_failure = give-up, but another collector holds the dump: {busy}")
            return 1
        mib = released.released_bytes >> 20
        _log(f"on_failure = give-up: {mib} MiB handed back without the dump")
        return 1
    resume = f"hvdump collect --root {root} --output {output}" if output else "hvdump service run"
    _log(f"the memory stays reserved (on_failure = keep): {why}; resume with: {resume}")
    return 1


def render_unit(hvdump: str, config: Path = CONFIG_PATH) -> str:
    """The systemd unit that runs ``hvdump service run`` in a capture boot."""
    return f"""\
[Unit]
Description=hvdump: collect the dump a crash left (hypervisor-assisted dump or fadump)
Documentation=https://github.com/hvdump/hvdump/blob/main/docs/service.md
# Only a capture boot has /proc/vmcore; hvdump checks the rest itself.
ConditionPathExists=/proc/vmcore
After=local-fs.target network-online.target
Wants=network-online.target
# Before kdump's own services: they find the dump collected and nothing to save.
Before=kdump.service kdump-tools.service

[Service]
Type=oneshot
ExecStart={hvdump} service run --config {config}
# A collection may take long; the journal gets a progress line now and then.
TimeoutStartSec=infinity
StandardOutput=journal
StandardError=journal
UMask=0077
Nice=-5

[Install]
WantedBy=multi-user.target
"""


def _hvdump_path() -> str:
    found = shutil.which("hvdump") or str(Path(sys.argv[0]).resolve())
    return str(Path(found).resolve()) if Path(found).exists() else found


def install(unit_dir: Path, config: Path, enable: bool) -> int:
    unit = unit_dir / UNIT_NAME
    unit_dir.mkdir(parents=True, exist_ok=True)
    text = render_unit(_hvdump_path(), config)
    changed = not unit.exists() or unit.read_text() != text
    if changed:
        tmp = unit.with_name(unit.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, unit)
    print(f"{unit}: {'written' if changed else 'unchanged'}")
    if not config.exists():
        config.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(DEFAULT_CONFIG)
        print(f"{config}: written with the defaults (edit it, then: hvdump service status)")
    else:
        load_config(config)
        print(f"{config}: kept (checked)")
    if enable:
        if shutil.which("systemctl") is None:
            raise HvdumpError("--enable: systemctl not found; enable the unit by hand")
        for cmd in (["systemctl", "daemon-reload"], ["systemctl", "enable", UNIT_NAME]):
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode:
                raise HvdumpError(f"{' '.join(cmd)}: {proc.stderr.strip() or proc.returncode}")
        print(f"{UNIT_NAME}: enabled (runs in the next capture boot)")
    return 0


def status(root: Path, unit_dir: Path, config: Path) -> int:
    from drgn_hvdump import api

    cfg = load_config(config)
    where = config if config.exists() else f"{config} (missing: the defaults apply)"
    print(f"config:        {where}")
    dest = cfg.archive or str(cfg.output)
    print(f"collects to:   {dest} ({cfg.compress}, dump level {cfg.dump_level}, "
          f"release {cfg.release}, on failure {cfg.on_failure})")  # fmt: skip
    unit = unit_dir / UNIT_NAME
    state = "not installed (hvdump service install)"
    if unit.exists():
        state = "installed"
        if shutil.which("systemctl"):
            proc = subprocess.run(
                ["systemctl", "is-enabled", UNIT_NAME], capture_output=True, text=True
            )
            state += f", {proc.stdout.strip() or 'unknown'}"
    print(f"unit:          {unit}: {state}")
    facts = api.facts(root)
    waiting = "yes" if facts["dump_waiting"] else "no"
    print(f"dump waiting:  {waiting} ({facts['interface']}: {facts['reason']})")
    return 0


def add_subcommand(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    s = sub.add_parser(
        "service",
        help="the capture-boot service: run, install, status",
        description=__doc__.split("\n\n", 1)[1].replace("``", "") if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  hvdump service install --enable    # unit + /etc/hvdump/hvdump.toml\n"
        "  hvdump service status\n"
        "  journalctl -u hvdump-capture        # what the last capture boot did\n",
    )
    ops = s.add_subparsers(dest="op", required=True, metavar="OP")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, default=CONFIG_PATH,
                        help=f"configuration file (default {CONFIG_PATH})")  # fmt: skip
    rooted = argparse.ArgumentParser(add_help=False)
    rooted.add_argument("--root", type=Path, default=Path("/"),
                        help="the capture kernel's root (default /)")  # fmt: skip
    r = ops.add_parser("run", parents=[common, rooted],
                       help="collect a waiting dump as the configuration says (the unit runs it)")  # fmt: skip
    r.set_defaults(func=lambda a: run(existing_root(a.root), a.config))
    unit_dir = argparse.ArgumentParser(add_help=False)
    unit_dir.add_argument("--unit-dir", type=Path, default=UNIT_DIR,
                          help=f"where the unit goes (default {UNIT_DIR})")  # fmt: skip
    i = ops.add_parser("install", parents=[common, unit_dir],
                       help="write the unit and, if missing, the configuration file")  # fmt: skip
    i.add_argument("--enable", action="store_true", help="systemctl enable the unit")
    i.set_defaults(func=lambda a: install(a.unit_dir, a.config, a.enable))
    st = ops.add_parser("status", parents=[common, rooted, unit_dir],
                        help="the configuration, the unit, and whether a dump waits")  # fmt: skip
    st.set_defaults(func=lambda a: status(existing_root(a.root), a.unit_dir, a.config))
