#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hvdump developers
# GNU General Public License v2.0+ (see https://www.gnu.org/licenses/gpl-2.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: hvdump_archive
short_description: Copy a collected dump to a central store, verify it there, then free the local copy
version_added: "0.1.0"
description:
  - Streams a complete dump directory to the archive with C(rsync) (over SSH for O(target.type=ssh),
    or to a local directory or mounted NAS path for O(target.type=dir)).
  - Writes C(SHA256SUMS) of every file beside the dump first, then checks it on the archive
    (C(sha256sum -c) there) and, with O(deep_verify), runs C(hvdump verify) there against the
    collector's per-chunk checksums.
  - The archive copy is checked against the local C(SHA256SUMS) (sent to C(sha256sum -c -) on
    the archive), not against the copy's own, so a damaged copy cannot vouch for itself.
  - Only after the archive copy verified, and only with O(remove_local), removes the local dump
    data; C(manifest.json), C(journal.jsonl) and C(ARCHIVED.json) (where it went) stay.
  - The removal re-checks the archive copy at that moment, also when C(ARCHIVED.json) says an
    earlier run verified it; a copy deleted, changed or unreachable since fails the task and the
    local copy is kept.
  - With O(check_only), checks the target instead, before anything irreversible happens
    (C(collect-dumps.yml) runs it before collecting); the settings, that the host reaches it
    (SSH with O(ssh_key) and O(ssh_options)), that O(target.path) or its nearest existing
    parent is writable there, and that C(rsync), C(sha256sum) and (with O(deep_verify))
    O(remote_hvdump) run there. Copies and creates nothing.
  - Idempotent; C(changed) is true when something was copied or removed.
options:
  src:
    description: The local dump directory (written by M(hvdump.power.hvdump_collect)). Required
      unless O(check_only).
    type: path
  target:
    description: Where dumps are archived.
    type: dict
    required: true
    suboptions:
      type:
        description: V(ssh) for an archive host, V(dir) for a local directory or mounted NAS path.
        type: str
        choices: [ssh, dir]
        required: true
      location:
        description: C(user@host) of the archive host (O(target.type=ssh)).
        type: str
      path:
        description: Directory on the archive that receives one subdirectory per dump.
        type: str
        required: true
      port:
        description: SSH port of the archive host.
        type: int
        default: 22
  ssh_key:
    description: Private key for the archive host.
    type: path
  ssh_options:
    description: More C(ssh) options, e.g. C(-o UserKnownHostsFile=/etc/hvdump/known_hosts).
    type: list
    elements: str
    default: []
  deep_verify:
    description: Also run O(remote_hvdump) C(verify) on the archived copy (needs hvdump there).
    type: bool
    default: true
  remote_hvdump:
    description: The C(hvdump) command on the archive (for O(deep_verify)).
    type: str
    default: hvdump
  remove_local:
    description:
      - Remove the local dump data once the archive copy verified; the copy is checked again
        against the local checksums right before the removal.
    type: bool
    default: false
  check_only:
    description:
      - Only check that the target can be used (settings, reachability, a writable path, the
        tools there); O(src) is not needed. Fails with the reason when it cannot.
    type: bool
    default: false
requirements:
  - rsync on the host (and on an SSH archive host), C(sha256sum) on the archive
extends_documentation_fragment:
  - hvdump.power.hvdump
attributes:
  diff_mode:
    support: full
    details: Where the dump's archive copy is recorded and which local data files remain, before
      and after.
"""

EXAMPLES = r"""
- name: Archive a dump over SSH and free the local copy once verified there
  hvdump.power.hvdump_archive:
    src: /var/crash/hvdump/lpar01-20251125-001903
    target:
      type: ssh
      location: dumps@archive.example.com
      path: /srv/hvdump
    ssh_key: /root/.ssh/id_hvdump
    remove_local: true

- name: Archive to a mounted NAS path
  hvdump.power.hvdump_archive:
    src: /var/crash/hvdump/lpar01-20251125-001903
    target:
      type: dir
      path: /mnt/nas/hvdump

- name: Check the archive host before collecting anything
  hvdump.power.hvdump_archive:
    check_only: true
    target:
      type: ssh
      location: dumps@archive.example.com
      path: /srv/hvdump
    ssh_key: /root/.ssh/id_hvdump
"""

RETURN = r"""
archive_path:
  description: Where the dump is on the archive (C(user@host:/path/NAME) or a local path); the
    target directory with O(check_only).
  returned: always
  type: str
verified:
  description: Whether the archive copy was checked against the checksums.
  returned: always
  type: bool
copied:
  description: Whether this run copied data.
  returned: always
  type: bool
removed_local:
  description: Whether this run removed the local dump data.
  returned: always
  type: bool
reverified:
  description: Whether the archive copy was checked again against the local checksums right
    before the local data was removed.
  returned: always
  type: bool
bytes:
  description: Bytes of the dump directory.
  returned: always
  type: int
"""

import hashlib
import json
import os
import shlex
import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.hvdump.power.plugins.module_utils.hvdump_common import (
    ARCHIVED_FILE,
    SUMS_FILE,
    journal_state,
    read_json,
    state_diff,
)

KEEP = ("manifest.json", "journal.jsonl", ARCHIVED_FILE, SUMS_FILE)


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(4 << 20)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def _data_files(src):
    return sorted(f for f in os.listdir(src)
                  if os.path.isfile(os.path.join(src, f)) and f not in (ARCHIVED_FILE, SUMS_FILE)
                  and not f.endswith(".tmp"))


class Archive:
    def __init__(self, module):
        self.m = module
        p = module.params
        self.t = p["target"]
        self.name = os.path.basename(os.path.normpath(p["src"])) if p["src"] else ""
        self.dest = os.path.join(self.t["path"], self.name) if self.name else self.t["path"]

    def ssh_cmd(self):
        cmd = ["ssh", "-p", str(self.t["port"]), "-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]
        if self.m.params["ssh_key"]:
            cmd += ["-i", self.m.params["ssh_key"], "-o", "IdentitiesOnly=yes"]
        return cmd + list(self.m.params["ssh_options"])

    @property
    def url(self):
        if self.t["type"] == "ssh":
            return "%s:%s" % (self.t["location"], self.dest)
        return self.dest

    def run(self, argv, what, data=None):
        try:
            rc, out, err = self.m.run_command(argv, data=data, handle_exceptions=False)
        except OSError as exc:
            raise RuntimeError("%s failed: %s" % (what, exc)) from None
        if rc != 0:
            text = [ln for ln in (err or "").strip().splitlines() + (out or "").strip().splitlines()
                    if ln.strip()]
            raise RuntimeError("%s failed (exit %d): %s" % (what, rc, "; ".join(text[-3:]) if text else "no output"))
        return out

    def remote(self, script, what, data=None):
        if self.t["type"] == "ssh":
            return self.run([*self.ssh_cmd(), self.t["location"], script], what, data)
        return self.run(["/bin/sh", "-c", script], what, data)

    def copy(self, src):
        q = shlex.quote
        self.remote("umask 077 && mkdir -p %s" % q(self.dest), "creating %s" % self.url)
        argv = [self.m.get_bin_path("rsync", required=True), "-a", "--partial", "--inplace", "--chmod=D700,F600"]
        if self.t["type"] == "ssh":
            argv += ["-e", " ".join(q(a) for a in self.ssh_cmd())]
            argv += [src.rstrip("/") + "/", "%s:%s/" % (self.t["location"], self.dest)]
        else:
            argv += [src.rstrip("/") + "/", self.dest + "/"]
        self.run(argv, "copying to %s" % self.url)

    def check_sums(self, sums):
        """The archive copy against the local checksums (the copy's own SHA256SUMS could be damaged too)."""
        # Read all of stdin first: a missing copy must fail with its reason, not a broken pipe.
        self.remote('s=$(cat) && cd %s && printf "%%s\\n" "$s" | sha256sum --quiet -c -'
                    % shlex.quote(self.dest),
                    "checking %s against the local SHA256SUMS" % self.url, data=sums)

    def verify(self, sums):
        self.check_sums(sums)
        if self.m.params["deep_verify"]:
            self.remote("%s verify %s" % (self.m.params["remote_hvdump"], shlex.quote(self.dest)),
                        "hvdump verify on %s" % self.url)

    def probe(self):
        """The target is usable: reachable, its path (or nearest parent) writable, tools present."""
        if self.t["type"] == "ssh":
            self.m.get_bin_path("ssh", required=True)
        self.m.get_bin_path("rsync", required=True)
        q = shlex.quote
        script = [
            "d=%s" % q(self.dest),
            't="$d"; while [ ! -d "$t" ]; do t=$(dirname "$t"); done',
            '[ -w "$t" ] || { echo "$t: not writable (read-only, or permission denied)" >&2; exit 3; }',
        ]
        if not self.m.check_mode:
            # A real write where the dumps go (the directory exists): a read-only or full
            # file system, or an export mapped to nobody, shows here.
            script.append('if [ "$t" = "$d" ]; then f=$(mktemp "$d/.hvdump-probe.XXXXXX") '
                          '|| { echo "$d: cannot create a file" >&2; exit 3; }; rm -f "$f"; fi')
        script.append('command -v sha256sum >/dev/null || { echo "sha256sum: not found" >&2; exit 4; }')
        if self.t["type"] == "ssh":
            script.append('command -v rsync >/dev/null || { echo "rsync: not found" >&2; exit 4; }')
        if self.m.params["deep_verify"]:
            script.append("%s verify --help >/dev/null 2>&1 || { echo %s >&2; exit 4; }" % (
                self.m.params["remote_hvdump"],
                q("%s: does not run (deep_verify needs hvdump there; set remote_hvdump)"
                  % self.m.params["remote_hvdump"])))
        self.remote("\n".join(script), "checking the archive target %s" % self.url)


def _write_record(src, rec):
    path = os.path.join(src, ARCHIVED_FILE)
    fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(rec, f)
    os.replace(path + ".tmp", path)


def _sums_covering(src):
    """The local SHA256SUMS text when it lists every data file now in src, else None."""
    try:
        with open(os.path.join(src, SUMS_FILE)) as f:
            text = f.read()
    except OSError:
        return None
    listed = set()
    for line in text.splitlines():
        parts = line.split("  ", 1)
        if len(parts) == 2 and len(parts[0]) == 64:
            listed.add(parts[1])
    return text if listed and set(_data_files(src)) <= listed else None


def main():
    module = AnsibleModule(
        argument_spec=dict(
            src=dict(type="path"),
            target=dict(type="dict", required=True, options=dict(
                type=dict(type="str", choices=["ssh", "dir"], required=True),
                location=dict(type="str"),
                path=dict(type="str", required=True),
                port=dict(type="int", default=22),
            ), required_if=[("type", "ssh", ["location"])]),
            ssh_key=dict(type="path", no_log=False),
            ssh_options=dict(type="list", elements="str", default=[]),
            deep_verify=dict(type="bool", default=True),
            remote_hvdump=dict(type="str", default="hvdump"),
            remove_local=dict(type="bool", default=False),
            check_only=dict(type="bool", default=False),
        ),
        required_if=[("check_only", False, ["src"])],
        supports_check_mode=True,
    )
    p = module.params
    src = p["src"]
    a = Archive(module)
    result = dict(archive_path=a.url, verified=False, copied=False, removed_local=False,
                  reverified=False, bytes=0)
    if p["check_only"]:
        try:
            a.probe()
        except (RuntimeError, OSError) as exc:
            module.fail_json(msg="the archive target cannot be used, nothing was done: %s" % exc, **result)
        module.exit_json(changed=False, msg="the archive target %s can be used" % a.url, **result)
    record = read_json(os.path.join(src, ARCHIVED_FILE))
    same = record is not None and record.get("archive_path") == a.url and record.get("verified")
    if not os.path.isdir(src):
        module.fail_json(msg="%s: no such dump directory" % src, **result)
    _started, done, _chunks = journal_state(src)
    manifest = read_json(os.path.join(src, "manifest.json"))
    if not done or manifest is None:
        module.fail_json(msg="%s: the collection is not complete (rerun the collection first); "
                         "nothing archived" % src, **result)
    data_file = os.path.join(src, manifest["dump"]["file"])
    local_present = os.path.exists(data_file)
    result["bytes"] = sum(os.path.getsize(os.path.join(src, f)) for f in _data_files(src))
    sums = _sums_covering(src) if same and local_present else None
    if same and (not local_present or sums is not None):
        result["verified"] = True
        if p["remove_local"] and local_present:
            # ARCHIVED.json says an earlier run verified the copy; it may have been deleted,
            # changed or become unreachable since. Check it again now, before the only other
            # copy goes.
            try:
                a.check_sums(sums)
            except (RuntimeError, OSError) as exc:
                result["verified"] = False
                module.fail_json(
                    msg="the archive copy no longer verifies, the local copy is kept: %s; "
                    "restore the archive copy, or remove %s to archive the dump again"
                    % (exc, os.path.join(src, ARCHIVED_FILE)), **result)
            result["reverified"] = True
            diff = _archive_diff(module, src, record, a.url, True)
            if not module.check_mode:
                _remove_local(src)
            result["removed_local"] = True
            module.exit_json(changed=True, **dict(result, **diff))
        module.exit_json(changed=False, msg="already archived and verified at %s" % a.url, **result)
    if not local_present:
        elsewhere = record.get("archive_path") if record and record.get("verified") else None
        if elsewhere:
            # Archived (and the local data removed) by a run to another store (`-e` with another
            # target): that copy is the dump's home; nothing is left here to copy to this one.
            result.update(archive_path=elsewhere, verified=True)
            module.exit_json(changed=False, msg="already archived and verified at %s (recorded in "
                             "%s); the local data is gone, so it is not copied to %s"
                             % (elsewhere, os.path.join(src, ARCHIVED_FILE), a.url), **result)
        module.fail_json(msg="%s: the dump data is gone and no verified archive copy is recorded"
                         % src, **result)
    if module.check_mode:
        module.exit_json(changed=True, msg="would archive %s to %s" % (src, a.url),
                         **dict(result, **_archive_diff(module, src, record, a.url, p["remove_local"])))
    try:
        path = os.path.join(src, SUMS_FILE)
        files = _data_files(src)
        sums = "".join("%s  %s\n" % (_sha256(os.path.join(src, f)), f) for f in files)
        fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(sums)
        os.replace(path + ".tmp", path)
        t0 = time.time()
        a.copy(src)
        result["copied"] = True
        result["copy_s"] = round(time.time() - t0, 3)
        a.verify(sums)
        result["verified"] = True
    except (RuntimeError, OSError) as exc:
        module.fail_json(msg="archive failed, the local copy is kept: %s (to %s)" % (exc, a.url), **result)
    _write_record(src, {"archive_path": a.url, "verified": True, "time": time.time(),
                        "target": dict(p["target"]), "files": len(files)})
    diff = _archive_diff(module, src, record, a.url, p["remove_local"])
    if p["remove_local"]:
        # Verified against the local checksums just now (a.verify above).
        result["reverified"] = True
        _remove_local(src)
        result["removed_local"] = True
    module.exit_json(changed=True, **dict(result, **diff))


def _archive_diff(module, src, record, url, removed):
    """Diff mode: the recorded archive copy and the local data files, before and after."""
    files = _data_files(src) if os.path.isdir(src) else []
    before = {"archived_at": record.get("archive_path") if record else "nowhere",
              "local_data": ", ".join(files) or "none"}
    after = {"archived_at": url, "local_data": "none" if removed else before["local_data"]}
    return state_diff(module, src, before, after)


def _remove_local(src):
    for f in os.listdir(src):
        path = os.path.join(src, f)
        if f not in KEEP and os.path.isfile(path):
            os.unlink(path)


if __name__ == "__main__":
    main()
