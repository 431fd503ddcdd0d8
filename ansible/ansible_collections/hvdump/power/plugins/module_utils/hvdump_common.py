# -*- coding: utf-8 -*-
# Copyright: hvdump developers
# GNU General Public License v2.0+ (see https://www.gnu.org/licenses/gpl-2.0.txt)
"""Shared code of the hvdump.power modules: the import guard and the dump-state facts.

The modules run on the LPAR and use the ``drgn_hvdump`` library installed there
(``pip install hvdump``) through its public API only, :mod:`drgn_hvdump.api` (and
:mod:`drgn_hvdump.errors`); this file travels with each module. What it reads by
itself is the modules' own files (``DUMP_ID.progress.json``, ``ARCHIVED.json``) and,
for hvdump_archive, which needs no hvdump on the host, whether a dump directory's
journal says the collection is complete.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import time
import traceback
from pathlib import Path

try:
    from drgn_hvdump import api
    from drgn_hvdump.errors import HvdumpError

    if not hasattr(api, "dump_id"):
        raise ImportError("drgn_hvdump.api has no dump_id(): the hvdump on the host is older "
                          "than this collection")
    HAS_HVDUMP = True
    HVDUMP_IMPORT_ERROR = None
except ImportError:  # pragma: no cover - exercised by the missing-library test
    HAS_HVDUMP = False
    HVDUMP_IMPORT_ERROR = traceback.format_exc()
    api = None

    class HvdumpError(Exception):
        """Stand-in so modules can name the exception without the library."""


# One collector per dump (hvdump with collection ownership): who holds the dump now.
HAS_OWNERSHIP = HAS_HVDUMP and hasattr(api, "owner")

from ansible.module_utils.basic import missing_required_lib

PROGRESS_SUFFIX = ".progress.json"
ARCHIVED_FILE = "ARCHIVED.json"
SUMS_FILE = "SHA256SUMS"


def state_diff(module, header, before, after):
    """Diff mode's view of what a module changes (or would): one ``key: value`` line each."""
    if not module._diff:
        return {}

    def text(state):
        return "".join("%s: %s\n" % (k, state[k]) for k in sorted(state))

    return {"diff": {"before_header": header, "after_header": header,
                     "before": text(before), "after": text(after)}}


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
        return api.owner(Path(root))
    except (HvdumpError, OSError, ValueError):
        return None


def owner_text(owner):
    """``pid N, DIR, since TIME UTC`` (what is known of it)."""
    parts = ["pid %s" % owner["pid"] if owner.get("pid") is not None else "another process"]
    if owner.get("output"):
        parts.append(str(owner["output"]))
    since = owner.get("since")
    if isinstance(since, (int, float)):
        parts.append("since " + time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(since)))
    return ", ".join(parts)


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def journal_state(out_dir):
    """(started, done, chunks journaled) of a collector output directory.

    For hvdump_archive, which runs without hvdump on the host; the other modules ask
    ``drgn_hvdump.api.collection``.
    """
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
        coll = api.collection(Path(path))
        archived = read_json(os.path.join(path, ARCHIVED_FILE))
        entry = {
            "path": path,
            "complete": coll["complete"],
            "chunks_saved": coll["chunks_saved"],
            "archived": archived,
        }
        if coll["complete"] and coll["dump_file"]:
            entry["dump_file"] = coll["dump_file"]
            entry["dump_size"] = coll["dump_size"]
        progress = read_json(path + PROGRESS_SUFFIX)
        if progress:
            entry["progress"] = progress
        if coll["started"] or archived:
            out[name] = entry
    return out


def dump_facts(root, hostname, dump_dir=None):
    """Everything an operator asks about one host's dump, as plain data.

    The dump state comes from ``drgn_hvdump.api.facts``; this adds the dump's id, its output
    directory under dump_dir, the collection's progress there and the dumps collected.
    """
    state = api.facts(Path(root))
    facts = {
        "root": str(root),
        "interface": state["interface"],
        "firmware_supported": state["firmware_supported"],
        "dump_enabled": state["dump_enabled"],
        "registered": state["registered"],
        "dump_waiting": state["dump_waiting"],
        "dump_valid": state["dump_valid"],
        "reason": state["reason"],
        "warnings": state["warnings"],
        "reserved_bytes": state["reserved_bytes"],
        "header": state["header"],
        "release_map": state["release_map"],
        "sections": state["sections"],
        "dump_bytes": state["dump_bytes"],
        "dump_id": None,
        "osrelease": state["osrelease"],
        "crash_time": state["crash_time"],
        "dump_dir": dump_dir,
        "output": None,
        "collection": None,
        "owner": None,
        "local_dumps": local_dumps(dump_dir),
    }
    if state["dump_waiting"]:
        facts["dump_id"] = api.dump_id(hostname, state)
        facts["owner"] = state["owner"] if HAS_OWNERSHIP else None
        if dump_dir:
            out = os.path.join(dump_dir, facts["dump_id"])
            facts["output"] = out
            coll = api.collection(Path(out))
            facts["collection"] = {
                "started": coll["started"],
                "complete": coll["complete"],
                "chunks_saved": coll["chunks_saved"],
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
