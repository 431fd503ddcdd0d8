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
  - Only after the archive copy verified, and only with O(remove_local), removes the local dump
    data; C(manifest.json), C(journal.jsonl) and C(ARCHIVED.json) (where it went) stay.
  - Idempotent; C(changed) is true when something was copied or removed.
options:
  src:
    description: The local dump directory (written by M(hvdump.power.hvdump_collect)).
    type: path
    required: true
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
    description: Remove the local dump data once the archive copy verified.
    type: bool
    default: false
requirements:
  - rsync on the host (and on an SSH archive host), C(sha256sum) on the archive
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
author:
  - hvdump developers
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
"""

RETURN = r"""
archive_path:
  description: Where the dump is on the archive (C(user@host:/path/NAME) or a local path).
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
        self.name = os.path.basename(os.path.normpath(p["src"]))
        self.dest = os.path.join(self.t["path"], self.name)

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

    def run(self, argv, what):
        rc, out, err = self.m.run_command(argv)
        if rc != 0:
            text = (err or out).strip().splitlines()
            raise RuntimeError("%s failed (exit %d): %s" % (what, rc, text[-1] if text else "no output"))
        return out

    def remote(self, script, what):
        if self.t["type"] == "ssh":
            return self.run([*self.ssh_cmd(), self.t["location"], script], what)
        return self.run(["/bin/sh", "-c", script], what)

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

    def verify(self):
        q = shlex.quote
        self.remote("cd %s && sha256sum --quiet -c %s" % (q(self.dest), SUMS_FILE),
                    "checking SHA256SUMS on %s" % self.url)
        if self.m.params["deep_verify"]:
            self.remote("%s verify %s" % (self.m.params["remote_hvdump"], q(self.dest)),
                        "hvdump verify on %s" % self.url)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            src=dict(type="path", required=True),
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
        ),
        supports_check_mode=True,
    )
    p = module.params
    src = p["src"]
    a = Archive(module)
    result = dict(archive_path=a.url, verified=False, copied=False, removed_local=False, bytes=0)
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
    if same:
        result["verified"] = True
        if p["remove_local"] and local_present:
            if not module.check_mode:
                _remove_local(src)
            result["removed_local"] = True
            module.exit_json(changed=True, **result)
        module.exit_json(changed=False, msg="already archived and verified at %s" % a.url, **result)
    if not local_present:
        module.fail_json(msg="%s: the dump data is gone and no verified archive copy is recorded"
                         % src, **result)
    if module.check_mode:
        module.exit_json(changed=True, msg="would archive %s to %s" % (src, a.url), **result)
    try:
        sums = os.path.join(src, SUMS_FILE)
        lines = ["%s  %s\n" % (_sha256(os.path.join(src, f)), f) for f in _data_files(src)]
        with open(sums + ".tmp", "w") as f:
            f.writelines(lines)
        os.chmod(sums + ".tmp", 0o600)
        os.replace(sums + ".tmp", sums)
        t0 = time.time()
        a.copy(src)
        result["copied"] = True
        result["copy_s"] = round(time.time() - t0, 3)
        a.verify()
        result["verified"] = True
    except (RuntimeError, OSError) as exc:
        module.fail_json(msg="archive failed, the local copy is kept: %s (to %s)" % (exc, a.url), **result)
    rec = {"archive_path": a.url, "verified": True, "time": time.time(),
           "target": dict(p["target"]), "files": len(lines)}
    with open(os.path.join(src, ARCHIVED_FILE), "w") as f:
        json.dump(rec, f)
    if p["remove_local"]:
        _remove_local(src)
        result["removed_local"] = True
    module.exit_json(changed=True, **result)


def _remove_local(src):
    for f in os.listdir(src):
        path = os.path.join(src, f)
        if f not in KEEP and os.path.isfile(path):
            os.unlink(path)


if __name__ == "__main__":
    main()
