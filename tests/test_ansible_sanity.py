"""``ansible-test sanity`` on the hvdump.power collection: what Galaxy and the Ansible
collection conventions check (validate-modules, pylint, yamllint, compile, imports, the
documentation of every plugin), with the ignore file's entries each justified in it.

ansible-test builds a virtual environment per test and bootstraps pip into it with a script
it downloads from Ansible's CI file host; this machine reaches only the package registries, so
the bootstrap is replaced (once, in ansible-test's cache) by one that does the same with
Python's own ``ensurepip`` and pip from the package index.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_ansible_helpers import BIN, REPO, ansible_env

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (BIN / "ansible-test").exists(), reason="needs ansible-test"),
]
COLLECTION = REPO / "ansible/ansible_collections/hvdump/power"
BOOTSTRAP = '''"""ansible-test's pip bootstrap, offline: ensurepip, then the pinned pip from the index."""
import subprocess
import sys

args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
subprocess.check_call([sys.executable, "-m", "ensurepip", "--default-pip"], stdout=subprocess.DEVNULL)
subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", *args])
'''


def _install_bootstrap() -> None:
    import ansible_test

    # The pip version ansible-test pins for its environments (``pip='24.2'``).
    src = Path(ansible_test.__file__).parent / "_internal/python_requirements.py"
    versions = set(re.findall(r"\bpip='([0-9.]+)'", src.read_text())) or {"24.2"}
    cache = Path.home() / ".ansible/test/cache"
    cache.mkdir(parents=True, exist_ok=True)
    for v in versions:
        path = cache / f"get_pip_{v.replace('.', '_')}.py"
        if not path.exists():
            path.write_text(BOOTSTRAP)


def test_ansible_test_sanity(tmp_path: Path) -> None:
    _install_bootstrap()
    env = ansible_env(tmp_path)
    env.pop("ANSIBLE_CONFIG", None)
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    res = subprocess.run(
        [str(BIN / "ansible-test"), "sanity", "--local", "--python", py, "--color", "no"],
        cwd=COLLECTION,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
    )
    out = res.stdout + res.stderr
    errors = [ln for ln in out.splitlines() if ln.startswith(("ERROR", "FATAL"))]
    assert res.returncode == 0, "\n".join(errors) or out[-3000:]
    # Every ignore is explained on its line.
    for line in (COLLECTION / "tests/sanity").glob("ignore-*.txt"):
        for entry in line.read_text().splitlines():
            assert not entry.strip() or " # " in entry, entry
