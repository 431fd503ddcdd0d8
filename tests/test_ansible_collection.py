"""The hvdump.power collection: lint, docs, argument specs, the missing-library message, modules."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from tests.test_ansible_helpers import (
    BIN,
    REPO,
    ansible_env,
    fleet,
    needs_ansible,
    recap,
    run_playbook,
)

pytestmark = [needs_ansible, pytest.mark.slow]
MODULES = ("hvdump_facts", "hvdump_collect", "hvdump_verify", "hvdump_release", "hvdump_archive")


def test_ansible_lint_production(tmp_path: Path) -> None:
    res = subprocess.run(
        [
            str(BIN / "ansible-lint"),
            "--profile",
            "production",
            "ansible/",
            "playbooks/",
            # The role test playbooks: .ansible-lint excludes tests/, named files are still linted.
            *sorted(str(p.relative_to(REPO)) for p in REPO.glob("tests/tests_*.yml")),
        ],
        cwd=REPO,
        env=ansible_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Profile 'production' was required, and it passed" in res.stdout + res.stderr


def test_module_docs_parse(tmp_path: Path) -> None:
    for name in MODULES:
        res = subprocess.run(
            [str(BIN / "ansible-doc"), "--json", f"hvdump.power.{name}"],
            cwd=REPO,
            env=ansible_env(tmp_path),
            capture_output=True,
            text=True,
            check=False,
        )
        assert res.returncode == 0, res.stderr
        doc = json.loads(res.stdout)[f"hvdump.power.{name}"]
        assert doc["doc"]["description"] and doc["examples"] and doc["return"]


def test_collection_builds_and_installs(tmp_path: Path) -> None:
    env = ansible_env(tmp_path)
    src = REPO / "ansible/ansible_collections/hvdump/power"
    subprocess.run(
        [
            str(BIN / "ansible-galaxy"),
            "collection",
            "build",
            str(src),
            "--output-path",
            str(tmp_path),
        ],
        check=True,
        env=env,
        capture_output=True,
    )
    tarball = next(tmp_path.glob("hvdump-power-*.tar.gz"))
    with tarfile.open(tarball) as tar:
        member = tar.extractfile("MANIFEST.json")
        assert member is not None
        info = json.load(member)["collection_info"]
    # One project URL everywhere (no placeholder).
    urls = [info[k] for k in ("repository", "homepage", "documentation", "issues")]
    assert all(u.startswith("https://github.com/hvdump/hvdump") for u in urls), urls
    subprocess.run(
        [
            str(BIN / "ansible-galaxy"),
            "collection",
            "install",
            "--force",
            str(tarball),
            "-p",
            str(tmp_path / "installed"),
        ],
        check=True,
        env=env,
        capture_output=True,
    )
    installed = tmp_path / "installed/ansible_collections/hvdump/power"
    assert (installed / "plugins/modules/hvdump_collect.py").exists()
    # Galaxy-grade: the READMEs, the playbooks and the filters ship inside the collection.
    for rel in (
        "README.md",
        "roles/prepare/README.md",
        "roles/collect/README.md",
        "roles/archive/README.md",
        "playbooks/collect_dumps.yml",
        "playbooks/dump_status.yml",
        "playbooks/templates/status.txt.j2",
        "plugins/filter/report.py",
        "meta/execution-environment.yml",
    ):
        assert (installed / rel).is_file(), rel
    # ansible-builder reads the collection's controller needs from its meta file ...
    intro = subprocess.run(
        [str(BIN / "ansible-builder"), "introspect", "--sanitize", str(tmp_path / "installed")],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "openssh-client [platform:dpkg]" in intro.stdout, intro.stdout
    # ... and accepts the repository's execution environment definition.
    ee_dir = tmp_path / "ee"
    (ee_dir / "build/ee").mkdir(parents=True)
    shutil.copy(REPO / "execution-environment.yml", ee_dir)
    shutil.copy(tarball, ee_dir / "build/ee" / tarball.name)
    create = subprocess.run(
        [str(BIN / "ansible-builder"), "create", "-f", str(ee_dir / "execution-environment.yml"),
         "-c", str(ee_dir / "context")],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert create.returncode == 0, create.stdout + create.stderr
    context = ee_dir / "context"
    assert (context / "_build/collections" / tarball.name).is_file()
    assert "ansible-galaxy collection install" in next(context.glob("*file")).read_text()


def test_role_readmes_are_generated_from_the_argument_specs() -> None:
    res = subprocess.run(
        [sys.executable, str(REPO / "scripts/role_readmes.py"), "--check"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    for role in ("prepare", "collect", "archive"):
        readme = (
            REPO / f"ansible/ansible_collections/hvdump/power/roles/{role}/README.md"
        ).read_text()
        spec = yaml.safe_load(
            (
                REPO
                / f"ansible/ansible_collections/hvdump/power/roles/{role}/meta/argument_specs.yml"
            ).read_text()
        )
        for name in spec["argument_specs"]["main"]["options"]:
            assert f"| `{name}` |" in readme, (role, name)


def _inventory(tmp_path: Path, hosts: dict[str, dict[str, object]]) -> Path:
    inv = tmp_path / "inv.yml"
    inv.write_text(yaml.safe_dump({"all": {"hosts": hosts}}))
    return inv


def _play(tmp_path: Path, tasks: list[dict[str, object]], name: str = "play.yml") -> str:
    play = [{"name": "Test", "hosts": "all", "gather_facts": False, "tasks": tasks}]
    path = tmp_path / name
    path.write_text(yaml.safe_dump(play, sort_keys=False))
    return str(path)


def test_missing_library_is_a_clear_message(tmp_path: Path) -> None:
    python = shutil.which("python3", path="/usr/bin")
    assert python
    probe = subprocess.run(
        [python, "-c", "import drgn_hvdump"], capture_output=True, check=False, cwd="/"
    )
    if probe.returncode == 0:
        pytest.skip("the system python has drgn_hvdump")
    inv = _inventory(
        tmp_path, {"h": {"ansible_connection": "local", "ansible_python_interpreter": python}}
    )
    play = _play(tmp_path, [{"name": "Facts", "hvdump.power.hvdump_facts": {"root": "/"}}])
    res = run_playbook(play, inv, tmp_path)
    assert res.returncode == 2
    assert "install hvdump on the host" in res.stdout


def test_role_argument_specs_reject_bad_input(tmp_path: Path) -> None:
    inv = _inventory(
        tmp_path,
        {
            "h": {
                "ansible_connection": "local",
                "ansible_python_interpreter": "{{ ansible_playbook_python }}",
            }
        },
    )
    cases = [
        # The shared inventory variable reaches the role's own through its default.
        (
            "hvdump.power.collect",
            {"hvdump_release": "sometimes", "hvdump": {"dump_waiting": False}},
            "collect_release must be one of",
        ),
        (
            "hvdump.power.collect",
            {"collect_release": "sometimes", "hvdump": {"dump_waiting": False}},
            "collect_release must be one of",
        ),
        (
            "hvdump.power.archive",
            {"hvdump_archive_target": {"type": "ftp", "path": "/x"}},
            "must be one of",
        ),
        (
            "hvdump.power.archive",
            {"hvdump_archive_target": {"type": "dir"}},
            "missing required arguments: path",
        ),
        (
            "hvdump.power.archive",
            {"archive_target": {"type": "dir"}},
            "missing required arguments: path",
        ),
        ("hvdump.power.prepare", {"hvdump_space_ratio": "lots"}, "prepare_space_ratio"),
    ]
    tasks: list[dict[str, object]] = []
    for i, (role, args, expected) in enumerate(cases):
        tasks.append(
            {
                "name": f"Case {i}",
                "block": [
                    {
                        "name": "Run the role",
                        "ansible.builtin.include_role": {"name": role},
                        "vars": args,
                    },
                    {
                        "name": "Not reached",
                        "ansible.builtin.fail": {"msg": f"case {i} was accepted"},
                    },
                ],
                "rescue": [
                    {
                        "name": "Check the message",
                        "ansible.builtin.assert": {
                            "that": [f"{expected!r} in ansible_failed_result.msg"]
                        },
                    }
                ],
            }
        )
    res = run_playbook(_play(tmp_path, tasks), inv, tmp_path)
    assert res.returncode == 0, res.stdout[-3000:]
    assert recap(res.stdout)["h"]["rescued"] == len(cases)


def test_modules_release_verify_check_mode(tmp_path: Path) -> None:
    """Collect with release=never, verify, release by hand (check mode first), idempotent."""
    with fleet(tmp_path / "fleet", 1, kinds=["crashed"], memory="1G") as hosts:
        h = hosts[0]
        inv = tmp_path / "fleet/inventory.yml"
        common = {"root": "{{ hvdump_root }}"}
        tasks = [
            {
                "name": "Refuse to release unsaved memory",
                "hvdump.power.hvdump_release": common,
                "register": "r0",
                "failed_when": "not r0.failed or 'refusing' not in r0.msg",
            },
            {
                "name": "Collect in check mode",
                "hvdump.power.hvdump_collect": {
                    **common,
                    "dump_dir": "{{ hvdump_dump_dir }}",
                    "release": "never",
                },
                "check_mode": True,
                "register": "c0",
            },
            {
                "name": "Collect, keep memory",
                "hvdump.power.hvdump_collect": {
                    **common,
                    "dump_dir": "{{ hvdump_dump_dir }}",
                    "release": "never",
                },
                "register": "c1",
            },
            {
                "name": "Collect again",
                "hvdump.power.hvdump_collect": {
                    **common,
                    "dump_dir": "{{ hvdump_dump_dir }}",
                    "release": "never",
                },
                "register": "c2",
            },
            {
                "name": "Verify",
                "hvdump.power.hvdump_verify": {"path": "{{ c1.output }}"},
                "register": "v",
            },
            {
                "name": "Facts",
                "hvdump.power.hvdump_facts": {**common, "dump_dir": "{{ hvdump_dump_dir }}"},
                "register": "f1",
            },
            {
                "name": "Release in check mode",
                "hvdump.power.hvdump_release": {**common, "output": "{{ c1.output }}"},
                "check_mode": True,
                "register": "r1",
            },
            {
                "name": "Release",
                "hvdump.power.hvdump_release": {**common, "output": "{{ c1.output }}"},
                "register": "r2",
            },
            {
                "name": "Release again",
                "hvdump.power.hvdump_release": {**common, "output": "{{ c1.output }}"},
                "register": "r3",
            },
            {"name": "Facts after", "hvdump.power.hvdump_facts": {**common}, "register": "f2"},
            {
                "name": "Save",
                "ansible.builtin.copy": {
                    "dest": str(tmp_path / "out.json"),
                    "mode": "0600",
                    "content": "{{ {'c0': c0, 'c1': c1, 'c2': c2, 'v': v, 'facts': f1.ansible_facts.hvdump, 'r1': r1, 'r2': r2, 'r3': r3, 'f2': f2} | to_json }}",
                },
            },
        ]
        res = run_playbook(_play(tmp_path, tasks), inv, tmp_path)
        assert res.returncode == 0, res.stdout[-4000:]
        out = json.loads((tmp_path / "out.json").read_text())
        assert out["c0"]["changed"] and not out["c0"]["collected"]
        assert (
            out["c1"]["changed"] and out["c1"]["released_bytes"] == 0 and out["c1"]["dump_size"] > 0
        )
        assert not out["c2"]["changed"] and out["c2"]["collected"]
        assert out["v"]["ok"] and not out["v"]["changed"]
        facts = out["facts"]
        assert facts["dump_waiting"], facts
        assert facts["collection"]["complete"], facts["collection"]
        assert facts["reserved_bytes"] > 0, facts
        assert out["r1"]["changed"] and out["r1"]["released_bytes"] > 0
        assert out["r2"]["changed"] and not out["r2"]["dump_waiting"]
        assert not out["r3"]["changed"]
        assert out["f2"]["ansible_facts"]["hvdump"]["registered"]
        from hvsim import Lpar

        with Lpar.open(h.lpar) as lpar:
            assert lpar.status()["protected"]
