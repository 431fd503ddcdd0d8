# -*- coding: utf-8 -*-
# Copyright: hvdump developers
# GNU General Public License v2.0+ (see https://www.gnu.org/licenses/gpl-2.0.txt)
"""Shared code of the hvdump.power modules: the import guard and the dump-state facts.

The modules run on the LPAR and use the ``drgn_hvdump`` library installed there
(``pip install hvdump``); this file travels with each module.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import dataclasses
import hashlib
import json
import os
import time
import traceback
from pathlib import Path

try:
    from drgn_hvdump.capture import open_capture
    from drgn_hvdump.errors import HvdumpError

    HAS_HVDUMP = True
    HVDUMP_IMPORT_ERROR = None
except ImportError:  # pragma: no cover - exercised by the missing-library test
    HAS_HVDUMP = False
    HVDUMP_IMPORT_ERROR = traceback.format_exc()

    class HvdumpError(Exception):
        """Stand-in so modules can name the exception without the library."""


try:
    # One collector per dump (hvdump with collection ownership): who holds the dump now.
    from drgn_hvdump.collect.ownership import dump_owner

    HAS_OWNERSHIP = True
except ImportError:  # pragma: no cover - an hvdump without collection ownership
    HAS_OWNERSHIP = False

from ansible.module_utils.basic import missing_required_lib

PROGRESS_SUFFIX = ".progress.json"
ARCHIVED_FILE = "ARCHIVED.json"
SUMS_FILE = "SHA256SUMS"


def require_hvdump(module):
    """Fail with a clear message when drgn_hvdump cannot be imported on the host."""
    if not HAS_HVDUMP:
        module.fail_json(
            msg=missing_required_lib(
                "hvdump",
                reason="to read and collect dumps: install hvdump on the host "
                "(pip install hvdump, or run the hvdump.power.prepare role)",
            ),
            exception=HVDUMP_IMPORT_ERROR,
        )


def require_ownership(module):
    """Fail when the host's hvdump cannot tell or enforce who collects a dump."""
    if not HAS_OWNERSHIP:
        module.fail_json(
            msg="the hvdump on the host has no collection ownership (one collector per dump): "
            "upgrade hvdump on the host (pip install -U hvdump, or the hvdump.power.prepare role "
            "with prepare_install); nothing was collected and the memory stays reserved",
        )


def owner_of(root):
    """The collector holding the dump under root: {pid, output, since}, or None."""
    if not HAS_OWNERSHIP:
        return None
    try:
        owner = dump_owner(Path(root))
    except (HvdumpError, OSError, ValueError):
        return None
    if owner is None:
        return None
    return {"pid": owner.pid, "output": owner.output, "since": owner.since}


def owner_text(owner):
    """``pid N, DIR, since TIME UTC`` (what is known of it)."""
    parts = ["pid %s" % owner["pid"] if owner.get("pid") is not None else "another process"]
    if owner.get("output"):
        parts.append(str(owner["output"]))
    since = owner.get("since")
    if isinstance(since, (int, float)):
        parts.append("since " + time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(since)))
    return ", ".join(parts)


def _vmcore_info(root):
    """CRASHTIME and OSRELEASE of the waiting dump, from /proc/vmcore's VMCOREINFO (cheap)."""
    try:
        from drgn_hvdump.formats.elfcore import ElfCore

        with ElfCore.open(os.path.join(root, "proc/vmcore")) as core:
            return dict(core.vmcoreinfo or {})
    except Exception:
        return {}


def dump_id(hostname, state, info):
    """A stable name for one dump: HOST-YYYYmmdd-HHMMSS of the crash (or a header hash)."""
    crash = info.get("CRASHTIME")
    if crash and str(crash).isdigit():
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(int(crash)))
        return "%s-%s" % (hostname, stamp)
    blob = json.dumps(dataclasses.asdict(state.header) if state.header else state.reason,
                      sort_keys=True, default=str)
    return "%s-%s" % (hostname, hashlib.sha256(blob.encode()).hexdigest()[:12])


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def journal_state(out_dir):
    """(started, done, chunks journaled) of a collector output directory."""
    path = os.path.join(out_dir, "journal.jsonl")
    if not os.path.exists(path):
        return False, False, 0
    chunks = 0
    done = False
    with open(path, "rb") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("t") == "chunk":
                chunks += 1
            elif rec.get("t") == "done":
                done = True
    return True, done, chunks


def local_dumps(dump_dir):
    """Collected dump directories under dump_dir: name -> summary."""
    out = {}
    if not dump_dir or not os.path.isdir(dump_dir):
        return out
    for name in sorted(os.listdir(dump_dir)):
        path = os.path.join(dump_dir, name)
        if not os.path.isdir(path) or name.startswith("."):
            continue
        started, done, chunks = journal_state(path)
        archived = read_json(os.path.join(path, ARCHIVED_FILE))
        manifest = read_json(os.path.join(path, "manifest.json")) if done else None
        entry = {
            "path": path,
            "complete": done,
            "chunks_saved": chunks,
            "archived": archived,
        }
        if manifest:
            entry["dump_file"] = os.path.join(path, manifest["dump"]["file"])
            entry["dump_size"] = manifest["dump"]["size"]
        progress = read_json(path + PROGRESS_SUFFIX)
        if progress:
            entry["progress"] = progress
        if started or archived:
            out[name] = entry
    return out


def _held_by_meminfo(root):
    try:
        ram = 0
        for d in ("proc/device-tree", "sys/firmware/devicetree/base"):
            path = os.path.join(root, d, "memory@0/reg")
            if os.path.exists(path):
                with open(path, "rb") as f:
                    reg = f.read()
                ram = int.from_bytes(reg[8:16], "big")
                break
        with open(os.path.join(root, "proc/meminfo")) as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    total = int(line.split()[1]) * 1024
                    return max(0, ram - total) if ram else 0
    except (OSError, ValueError, IndexError):
        pass
    return 0


def dump_facts(root, hostname, dump_dir=None):
    """Everything an operator asks about one host's dump, as plain data."""
    capture = open_capture(root)
    state = capture.state()
    data = dataclasses.asdict(state)
    info = _vmcore_info(root) if state.dump_waiting else {}
    registered = bool(state.firmware_supported and state.dump_enabled and not state.dump_waiting)
    facts = {
        "root": str(root),
        "interface": state.interface,
        "firmware_supported": state.firmware_supported,
        "dump_enabled": state.dump_enabled,
        "registered": registered,
        "dump_waiting": state.dump_waiting,
        "dump_valid": state.valid,
        "reason": state.reason,
        "warnings": list(state.warnings),
        "reserved_bytes": state.reserved_bytes,
        "header": data["header"],
        "release_map": data["release_map"],
        "sections": {},
        "dump_bytes": 0,
        "dump_id": None,
        "osrelease": info.get("OSRELEASE"),
        "crash_time": int(info["CRASHTIME"]) if str(info.get("CRASHTIME", "")).isdigit() else None,
        "dump_dir": dump_dir,
        "output": None,
        "collection": None,
        "owner": None,
        "local_dumps": local_dumps(dump_dir),
    }
    if state.header is not None:
        for name in ("cpu", "hpte", "rmo"):
            sec = getattr(state.header, name)
            facts["sections"][name] = {
                "source_length": sec.source_length,
                "length_copied": sec.length_copied,
                "error_flags": sec.error_flags,
                "destination_address": sec.destination_address,
            }
    if state.release_map is not None:
        rm = state.release_map
        facts["dump_bytes"] = (
            rm.reserved.size + rm.cpu.size + rm.hpte.size + rm.dump.size
        )
    if state.dump_waiting and not state.reserved_bytes:
        # The header could not be read: what the capture kernel holds back is RAM minus MemTotal.
        facts["reserved_bytes"] = _held_by_meminfo(root)
    if state.dump_waiting:
        facts["dump_id"] = dump_id(hostname, state, info)
        facts["owner"] = owner_of(root)
        if dump_dir:
            out = os.path.join(dump_dir, facts["dump_id"])
            facts["output"] = out
            started, done, chunks = journal_state(out)
            facts["collection"] = {
                "started": started,
                "complete": done,
                "chunks_saved": chunks,
                "progress": read_json(out + PROGRESS_SUFFIX),
            }
    return facts


def free_bytes(path):
    """Free bytes available at path (or its nearest existing parent)."""
    p = os.path.abspath(path)
    while not os.path.exists(p):
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    st = os.statvfs(p)
    return st.f_bavail * st.f_frsize
