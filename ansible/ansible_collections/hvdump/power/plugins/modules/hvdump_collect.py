#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hvdump developers
# GNU General Public License v2.0+ (see https://www.gnu.org/licenses/gpl-2.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: hvdump_collect
short_description: Collect a waiting hypervisor-assisted dump and give memory back as it is saved
version_added: "0.1.0"
description:
  - Runs the hvdump collector (C(hvdump collect)) on the host. It copies the waiting dump under
    O(root) into O(dump_dir)/DUMP_ID, where DUMP_ID is C(HOST-YYYYmmdd-HHMMSS) of the crash.
  - Memory is released only after its bytes are written, synced and read back with the right
    checksum (O(release)).
  - Resumes an interrupted collection from the collector journal in the output directory; run it
    again after a kill, a reboot of the capture kernel or a full disk.
  - Writes the latest progress to O(dump_dir)/DUMP_ID.progress.json, which
    M(hvdump.power.hvdump_facts) reports; run it with C(async) for long collections.
  - One collector per dump. When another collector already holds the dump (the previous run's,
    still running after a dropped connection or a killed controller, or one started by hand), no
    second collector starts. With O(wait) (the default) the module attaches to it; it waits until
    that collector ends and reports its result (RV(status=collected) with RV(attached)), or
    resumes the collection itself when that collector died part-way. Without O(wait), or when
    O(wait_timeout) runs out, it returns RV(status=in_progress), C(changed=false), not failed,
    with C(msg) naming the owner (C(collection in progress (pid N, DIR, since TIME))).
  - Nothing to do (no dump waiting, or this dump already collected) reports C(changed=false).
options:
  dump_dir:
    description: Directory for this host's dumps; the dump goes to a subdirectory named by its id.
    type: path
    required: true
  release:
    description:
      - When memory goes back to the LPAR. V(progressive) releases each range once saved,
        V(at-end) after the whole dump is saved, V(never) keeps it reserved
        (release later with M(hvdump.power.hvdump_release)).
    type: str
    choices: [progressive, at-end, never]
    default: progressive
  format:
    description: Dump file format.
    type: str
    choices: [kdump, elf]
    default: kdump
  compress:
    description: Page codec of kdump files.
    type: str
    choices: [zstd, zlib, lzo, snappy]
    default: zstd
  threads:
    description: Compression threads.
    type: int
    default: 1
  accept_partial:
    description: Collect a dump the hypervisor copied only in part.
    type: bool
    default: false
  scrub:
    description: A filter file naming data to erase from the dump (C(erase SYMBOL size N)).
    type: path
  wait:
    description:
      - When another collector holds the dump, wait for it to end and report its result (or
        resume the collection if it died part-way) instead of returning RV(status=in_progress)
        at once.
      - Never starts a second collector either way.
    type: bool
    default: true
  wait_timeout:
    description:
      - With O(wait), wait at most this many seconds for the other collector, then return
        RV(status=in_progress). Unset, wait as long as the collection takes (an C(async) limit
        still applies). V(0) does not wait.
    type: int
  target:
    description:
      - Collect straight to an archive host instead of O(dump_dir) (for a capture kernel without
        a local disk large enough for the dump). C(hvdump receive) runs there through C(ssh) and
        writes O(target.path)/DUMP_ID as a local collection would; memory is released only once
        it has synced and acknowledged every page. O(dump_dir) keeps only the progress file.
      - Before anything is read or released (and in check mode) the module logs in there, starts
        C(hvdump receive) and checks that the directory could be written; a target that cannot be
        used fails the task with the memory still reserved.
      - Unset, the dump goes to O(dump_dir)/DUMP_ID.
    type: dict
    suboptions:
      type:
        description: V(ssh), the only kind of collection target.
        type: str
        choices: [ssh]
        required: true
      location:
        description: C(user@host) of the archive host.
        type: str
        required: true
      path:
        description: Directory on the archive host that receives one subdirectory per dump
          (absolute, or relative to the remote user's home).
        type: str
        required: true
      port:
        description: SSH port of the archive host.
        type: int
        default: 22
  ssh_key:
    description: Private key for the archive host (O(target)).
    type: path
  ssh_options:
    description: More C(ssh) options for O(target), e.g. C(-o UserKnownHostsFile=/etc/hvdump/known_hosts).
    type: list
    elements: str
    default: []
  remote_hvdump:
    description: The C(hvdump) command on the archive host (O(target)).
    type: str
    default: hvdump
  extra_args:
    description: More arguments for C(hvdump collect).
    type: list
    elements: str
    default: []
extends_documentation_fragment:
  - hvdump.power.hvdump
  - hvdump.power.hvdump.library
  - hvdump.power.hvdump.root
  - hvdump.power.hvdump.host_name
attributes:
  check_mode:
    details: Reports whether a collection would run (or is in progress); reads nothing from the
      dump and never waits.
  async:
    description: Supports being used with the C(async) keyword.
    support: full
  diff_mode:
    support: full
    details: The dump's state, its output directory and the reserved memory before and after.
"""

EXAMPLES = r"""
- name: Collect the waiting dump, releasing memory as it is saved
  hvdump.power.hvdump_collect:
    dump_dir: /var/crash/hvdump
  async: 43200
  poll: 10

- name: Collect straight to an archive host (the capture kernel has no disk large enough)
  hvdump.power.hvdump_collect:
    dump_dir: /var/crash/hvdump
    target:
      type: ssh
      location: dumps@archive.example.com
      path: /srv/dumps
    ssh_key: /etc/hvdump/id_ed25519
    ssh_options: [-o, UserKnownHostsFile=/etc/hvdump/known_hosts]
- name: Collect but keep memory reserved
  hvdump.power.hvdump_collect:
    dump_dir: /var/crash/hvdump
    release: never

- name: Collect, or only report a collection already running (pid, directory)
  hvdump.power.hvdump_collect:
    dump_dir: /var/crash/hvdump
    wait: false
  register: collect

- name: Show who is collecting
  ansible.builtin.debug:
    msg: "{{ collect.msg }}"
  when: collect.status == 'in_progress'
"""

RETURN = r"""
target_free_bytes:
  description: Free bytes on the archive host's file system that receives the dump (with O(target)),
    as the check before collecting found them.
  returned: when O(target) is set and the target was checked
  type: int
status:
  description:
    - What happened. V(no_dump) nothing to collect; V(would_collect) check mode;
      V(collected) the dump was collected (or resumed) during this task, by this task's collector
      or by the one it attached to (RV(attached)); V(already_collected) it was complete before
      the task; V(in_progress) another collector holds the dump (RV(owner)) and this task did not
      wait for it (O(wait=false), O(wait_timeout), or check mode).
  returned: always
  type: str
  choices: [no_dump, would_collect, collected, already_collected, in_progress]
  sample: collected
collected:
  description: Whether a dump is (now) collected in RV(output).
  returned: always
  type: bool
attached:
  description:
    - Whether another collector held the dump when the task started, so that the task waited
      for it instead of starting one. With RV(status=collected), that collector (or, if it
      died part-way, this task's, RV(resumed)) finished the dump during the task.
  returned: when a dump was waiting
  type: bool
owner:
  description: The collector holding the dump when the task started or gave up waiting.
  returned: when RV(status=in_progress), or RV(attached)
  type: dict
  contains:
    pid:
      description: Its process id on the host.
      type: int
    output:
      description: The directory it writes (null when it cannot be known).
      type: str
    since:
      description: When it took the dump, in seconds since the epoch (null when unknown).
      type: float
waited_s:
  description: Seconds the task waited for another collector.
  returned: when RV(attached)
  type: float
dump_id:
  description: The dump's id (the output directory's name).
  returned: when a dump was waiting
  type: str
output:
  description: The output directory (dump file, metadata, manifest, journal).
  returned: when a dump was waiting
  type: str
dump_file:
  description: The dump file, for C(drgn -c).
  returned: when collected
  type: str
dump_size:
  description: Bytes of the dump file.
  returned: when collected
  type: int
bytes_read:
  description: Bytes of memory read from the dump.
  returned: when collected
  type: int
elapsed_s:
  description: Seconds the collector ran (this run).
  returned: when collected
  type: float
released_bytes:
  description: Bytes of memory given back to the LPAR (so far, for RV(status=in_progress)).
  returned: always
  type: int
cpu_s:
  description: CPU seconds (user and system) the collector process used in this run.
  returned: when collected in this run (not when RV(attached) and the other collector finished)
  type: float
resumed:
  description: Whether this run resumed an interrupted collection.
  returned: when collected
  type: bool
warnings_collector:
  description: Warnings of the collector.
  returned: when collected
  type: list
  elements: str
ansible_facts:
  description: The refreshed C(hvdump) fact, as M(hvdump.power.hvdump_facts) returns it.
  returned: unless the module failed
  type: dict
  contains:
    hvdump:
      description: The host's dump state after this run (reserved memory, registration, local dumps).
      type: dict
      returned: unless the module failed
"""

import contextlib
import json
import os
import re
import resource
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.hvdump.power.plugins.module_utils.hvdump_common import (
    PROGRESS_SUFFIX,
    HvdumpError,
    api,
    dump_facts,
    free_bytes,
    owner_of,
    owner_text,
    read_json,
    require_hvdump,
    require_ownership,
    state_diff,
)
from ansible_collections.hvdump.power.plugins.module_utils.hvdump_spec import argument_spec

# The collector's exit status when another collector holds the dump (EX_TEMPFAIL).
EX_TEMPFAIL = 75


def _write_progress(path, value):
    """Best effort: a full disk must not hide the collector's own message."""
    tmp = path + ".tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(value, f)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _summary(output, done_ev=None):
    """What the collected dump directory holds (from its manifest, through the hvdump API; for a
    directory on an archive host, from the collector's own last line, which says the same)."""
    if output.startswith("ssh://"):
        ev = done_ev or {}
        out = dict((k, ev.get(k)) for k in ("dump_file", "dump_size", "bytes_read", "elapsed_s"))
        return dict(out, released_bytes=ev.get("released_bytes") or 0,
                    warnings_collector=ev.get("warnings") or [])
    c = api.collection(Path(output))
    return {
        "dump_file": c["dump_file"],
        "dump_size": c["dump_size"],
        "bytes_read": c["bytes_read"],
        "elapsed_s": c["elapsed_s"],
        "released_bytes": c["released_bytes"],
        "warnings_collector": c["warnings"],
    }


def _facts(p, host, facts=None):
    """The hvdump fact as hvdump_facts returns it (refreshed unless given), so the roles need no second read."""
    if facts is None:
        try:
            facts = dump_facts(p["root"], host, p["dump_dir"])
        except (HvdumpError, OSError):
            return {}
    facts = dict(facts, dest_free_bytes=free_bytes(p["dump_dir"]))
    return {"hvdump": facts}


def _busy_owner(err):
    """The owner named by the collector's one busy line on stderr, when no JSON line came."""
    m = re.search(r"being collected by pid (\d+)(?: into (.+?))?(?: since [^;]*)?;", err or "")
    if not m:
        return None
    return {"pid": int(m.group(1)), "output": m.group(2), "since": None}


def _remote_output(target, dump_id):
    """The collector's --output for a dump going straight to the archive host."""
    path = target["path"].rstrip("/")
    path = path if path.startswith("/") else "/~/" + path
    return "ssh://%s:%d%s/%s" % (target["location"], target["port"], path, dump_id)


def _progress_pid(path):
    rec = read_json(path)
    return rec.get("pid") if isinstance(rec, dict) else None


def _in_progress(module, p, host, result, owner, waited, progress_path):
    """Another collector holds the dump and this task does not wait (longer) for it."""
    output = result["output"]
    progress = read_json(progress_path) or {}
    if owner.get("output") and os.path.realpath(owner["output"]) != os.path.realpath(output):
        progress = {}
    how = ("; gave up waiting after %d s" % waited) if waited else ""
    result.update(
        status="in_progress",
        collected=False,
        owner=owner,
        released_bytes=progress.get("released_bytes", 0) if isinstance(progress, dict) else 0,
    )
    module.exit_json(
        changed=False,
        msg="collection in progress (%s)%s; no second collector was started: rerun to attach "
        "to it" % (owner_text(owner), how),
        ansible_facts=_facts(p, host),
        **result
    )


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(
            root=True,
            dump_dir="required",
            host_name=True,
            release=dict(type="str", choices=["progressive", "at-end", "never"], default="progressive"),
            format=dict(type="str", choices=["kdump", "elf"], default="kdump"),
            compress=dict(type="str", choices=["zstd", "zlib", "lzo", "snappy"], default="zstd"),
            threads=dict(type="int", default=1),
            accept_partial=dict(type="bool", default=False),
            scrub=dict(type="path"),
            wait=dict(type="bool", default=True),
            wait_timeout=dict(type="int"),
            target=dict(type="dict", options=dict(
                type=dict(type="str", choices=["ssh"], required=True),
                location=dict(type="str", required=True),
                path=dict(type="str", required=True),
                port=dict(type="int", default=22),
            )),
            ssh_key=dict(type="path", no_log=False),
            ssh_options=dict(type="list", elements="str", default=[]),
            remote_hvdump=dict(type="str", default="hvdump"),
            extra_args=dict(type="list", elements="str", default=[]),
        ),
        supports_check_mode=True,
    )
    require_hvdump(module)
    require_ownership(module)
    p = module.params
    if p["wait_timeout"] is not None and p["wait_timeout"] < 0:
        module.fail_json(msg="wait_timeout must be 0 or more seconds, got %d" % p["wait_timeout"])
    host = p["host_name"] or socket.gethostname().split(".")[0]
    try:
        facts = dump_facts(p["root"], host, p["dump_dir"])
    except (HvdumpError, OSError) as exc:
        module.fail_json(msg="%s: cannot read the dump state: %s" % (p["root"], exc), released_bytes=0)
    if not facts["dump_waiting"]:
        module.exit_json(changed=False, status="no_dump", collected=False, released_bytes=0,
                         msg="no dump to collect: %s" % facts["reason"], ansible_facts=_facts(p, host, facts))
    output = local = facts["output"]
    if p["target"]:
        output = _remote_output(p["target"], facts["dump_id"])
    result = dict(dump_id=facts["dump_id"], output=output, released_bytes=0, attached=False)
    if p["target"]:
        # Before anything irreversible (and in check mode): log in, start the receiver there and
        # check the directory could be written; nothing is made on the archive host.
        try:
            found = api.check_target(output, ssh=tuple(["ssh"] + p["ssh_options"]), identity=p["ssh_key"],
                                     remote_hvdump=p["remote_hvdump"])
        except HvdumpError as exc:
            module.fail_json(msg="the collect target cannot be used, nothing was done and the memory "
                             "stays reserved: %s" % exc, collected=False, **result)
        result["target_free_bytes"] = found["free_bytes"]
        # On the archive host: the collector itself finds a finished or started collection there.
        started, done, chunks = False, False, 0
    else:
        coll = api.collection(Path(output))
        started, done, chunks = coll["started"], coll["complete"], coll["chunks_saved"]
    if done:
        result.update(_summary(output))
        module.exit_json(changed=False, status="already_collected", collected=True, resumed=False,
                         msg="already collected in %s" % output, ansible_facts=_facts(p, host, facts), **result)
    owner = facts["owner"]
    if owner is not None and (module.check_mode or not p["wait"]):
        _in_progress(module, p, host, result, owner, 0, local + PROGRESS_SUFFIX)
    if facts["header"] is None or (not facts["dump_valid"] and not p["accept_partial"]):
        module.fail_json(
            msg="%s: the waiting dump cannot be collected: %s; its memory stays reserved"
            % (p["root"], facts["reason"]),
            collected=False, **result)
    before = {"dump": "waiting", "reserved_bytes": facts["reserved_bytes"],
              "output": "%d chunks saved" % chunks if started else "none"}
    if module.check_mode:
        result.update(state_diff(module, output, before, {
            "dump": "collected", "output": output,
            "reserved_bytes": 0 if p["release"] != "never" else facts["reserved_bytes"]}))
        module.exit_json(changed=True, status="would_collect", collected=False,
                         msg="would %s the dump into %s" % ("resume" if started else "collect", output),
                         ansible_facts=_facts(p, host, facts), **result)
    if not os.path.isdir(p["dump_dir"]):
        os.makedirs(p["dump_dir"], 0o700)
    cmd = [sys.executable, "-m", "drgn_hvdump.cli", "collect", "--root", p["root"],
           "--output", output, "--json", "--no-progress", "--release", p["release"],
           "--format", p["format"], "--compress", p["compress"], "--threads", str(p["threads"])]
    if p["accept_partial"]:
        cmd.append("--accept-partial")
    if p["scrub"]:
        cmd += ["--scrub", p["scrub"]]
    if p["wait"]:
        cmd.append("--wait")
        if p["wait_timeout"] is not None:
            cmd += ["--wait-timeout", str(p["wait_timeout"])]
    env = None
    if p["target"]:
        if p["ssh_key"]:
            cmd += ["--ssh-identity", p["ssh_key"]]
        cmd += ["--remote-hvdump", p["remote_hvdump"]]
        env = dict(os.environ, HVDUMP_SSH=" ".join(shlex.quote(a) for a in ["ssh"] + p["ssh_options"]))
    cmd += p["extra_args"]
    progress_path = local + PROGRESS_SUFFIX
    t0 = time.time()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True, env=env)
    last = {"event": "start", "pid": proc.pid, "started": t0, "resumed_from_chunks": chunks}
    # The progress file belongs to the collector that holds the dump: while another one does,
    # this task only waits, and writes it once its own collector reports progress.
    owning = owner is None
    if owning:
        _write_progress(progress_path, last)
    written = 0.0
    busy = None
    done_ev = None
    took_over = None
    for line in proc.stdout:
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if not isinstance(ev, dict):
            continue
        kind = ev.get("event")
        if kind == "busy":
            busy = {"pid": ev.get("pid"), "output": ev.get("output"), "since": ev.get("since")}
        elif kind == "done":
            done_ev = ev
        elif kind == "progress":
            if not owning:
                # The other collector is gone and this task's took the dump over.
                owning = True
                took_over = time.time()
                last = dict(last, started=took_over)
            last = dict(ev, pid=proc.pid, started=last["started"], resumed_from_chunks=chunks)
            if time.time() - written > 0.5:
                _write_progress(progress_path, last)
                written = time.time()
    err = proc.stderr.read()
    rc = proc.wait()
    waited = round((took_over or time.time()) - t0, 3)
    if rc == EX_TEMPFAIL:
        # Another collector holds the dump (or the directory) and we did not wait (longer).
        if _progress_pid(progress_path) == proc.pid:
            # Our start record (the other collector took the dump just before ours): not ours.
            with contextlib.suppress(OSError):
                os.unlink(progress_path)
        busy = busy or _busy_owner(err) or owner_of(p["root"]) or owner or {"pid": None}
        _in_progress(module, p, host, result, busy, waited if p["wait"] else 0, progress_path)
    already = bool(done_ev and done_ev.get("already_done"))
    # Attached: another collector held the dump when the task started, or finished it meanwhile.
    attached = owner is not None or already
    # This task's collector did (the rest of) the work.
    ours = owning or (done_ev is not None and not already)
    if owning and _progress_pid(progress_path) in (None, proc.pid):
        last["rc"] = rc
        last["event"] = "finished" if rc == 0 else "failed"
        _write_progress(progress_path, last)
    released = last.get("released_bytes", 0)
    if rc != 0:
        lines = [ln for ln in err.strip().splitlines() if ln.strip()]
        if rc < 0:
            why = "the collector was killed by signal %s" % signal.Signals(-rc).name
        else:
            why = lines[-1] if lines else "the collector exited with status %d" % rc
        if attached:
            # The collector we waited for may have collected the dump into another directory
            # and given its memory back: then nothing is left to collect.
            try:
                after = dump_facts(p["root"], host, p["dump_dir"])
            except (HvdumpError, OSError):
                after = None
            if after is not None and not after["dump_waiting"]:
                result.update(owner=owner, waited_s=waited)
                module.exit_json(
                    changed=False, status="no_dump", collected=False,
                    msg="no dump to collect any more: %s had it while this task waited"
                    % owner_text(owner or {"pid": None}),
                    ansible_facts=_facts(p, host, after), **result)
        module.fail_json(
            msg="%s (after %d of %d bytes); rerun to resume from the journal in %s; "
            "memory not yet saved stays reserved"
            % (why, last.get("bytes_done", 0), last.get("bytes_total", 0), output),
            collected=False, rc=rc, stderr=err, released_bytes=released, dump_id=facts["dump_id"],
            output=output, attached=attached,
        )
    result.update(_summary(output, done_ev))
    result["attached"] = bool(attached)
    if attached:
        result.update(owner=owner, waited_s=waited)
    if ours:
        result["elapsed_s"] = round(time.time() - (took_over or t0), 3)
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        result["cpu_s"] = round(ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime, 3)
    resumed = ours and (started or bool(done_ev and done_ev.get("resumed")))
    # The dump was not complete when the task started and is now: changed, whether this task's
    # collector or the one it attached to finished it.
    after = _facts(p, host)
    result.update(state_diff(module, output, before, {
        "dump": "collected", "output": output,
        "reserved_bytes": after["hvdump"]["reserved_bytes"] if after else "unknown"}))
    module.exit_json(changed=True, status="collected", collected=True, resumed=resumed,
                     ansible_facts=after, **result)


if __name__ == "__main__":
    main()
