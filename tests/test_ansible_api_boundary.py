"""The hvdump.power modules use hvdump only through its public API; shared docs and specs."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import yaml

from drgn_hvdump import api
from drgn_hvdump.dumpdir import manifest as mf

PLUGINS = (
    Path(__file__).resolve().parent.parent / "ansible/ansible_collections/hvdump/power/plugins"
)
ALLOWED = {"drgn_hvdump.api", "drgn_hvdump.errors"}


def _hvdump_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "drgn_hvdump"}
        elif (
            isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "drgn_hvdump"
        ):
            if node.module == "drgn_hvdump":
                found |= {f"drgn_hvdump.{a.name}" for a in node.names}
            else:
                found.add(str(node.module))
    return found


def test_plugins_import_only_the_public_api() -> None:
    files = sorted(PLUGINS.glob("module*/*.py"))
    assert len(files) >= 6
    for path in files:
        assert _hvdump_imports(path) <= ALLOWED, path


def test_modules_share_the_doc_fragment_and_spec() -> None:
    for path in sorted((PLUGINS / "modules").glob("hvdump_*.py")):
        tree = ast.parse(path.read_text())
        doc = next(
            n.value.value
            for n in tree.body
            if isinstance(n, ast.Assign)
            and getattr(n.targets[0], "id", "") == "DOCUMENTATION"
            and isinstance(n.value, ast.Constant)
        )
        data = yaml.safe_load(str(doc))
        fragments = data["extends_documentation_fragment"]
        assert "hvdump.power.hvdump" in fragments, path
        assert "author" not in data and "root" not in data["options"], path
        # The root option: documented by the fragment, specified by module_utils/hvdump_spec.py.
        has_root = "argument_spec(root=True" in path.read_text().replace("\n", "").replace(" ", "")
        assert has_root == ("hvdump.power.hvdump.root" in fragments), path


def test_collection_reads_journal_and_manifest(tmp_path: Path) -> None:
    assert api.collection(tmp_path)["started"] is False
    (tmp_path / "journal.jsonl").write_text(
        '{"t": "start"}\n{"t": "chunk"}\n{"t": "chunk"}\n{"t": "done"}\n{"t": "chu'
    )
    mf.save_manifest(
        tmp_path,
        mf.Manifest(
            tool="hvdump collect",
            source=mf.Source(byteorder="big", page_size=4096, vmcoreinfo={}),
            dump=mf.DumpFileInfo("dump.kdump", "kdump", 123, ((0, 12288),)),
            chunks=(
                mf.ChunkRecord(0, "mem", 0, 4096, "0" * 16),
                mf.ChunkRecord(1, "mem", 4096, 8192, "1" * 16),
            ),
            metadata={"cpu": mf.MetaFile("regsave.bin", 0), "hpte": mf.MetaFile("hpte.bin", 0)},
            release=mf.ReleaseRecord(
                "progressive",
                0,
                15,
                (0, 0),
                (
                    mf.ReleaseWriteRecord(0, 10, False, (0, 0), True),
                    mf.ReleaseWriteRecord(10, 5, True, (0, 0), False),
                ),
                (0, 1),
            ),
            timings={"elapsed_s": 1.5},
            warnings=("w",),
        ),
    )
    assert api.collection(tmp_path) == {
        "started": True,
        "complete": True,
        "chunks_saved": 2,
        "dump_file": str(tmp_path / "dump.kdump"),
        "dump_size": 123,
        "bytes_read": 12288,
        "elapsed_s": 1.5,
        "released_bytes": 10,
        "warnings": ["w"],
    }


def test_facts_of_a_root_without_firmware(tmp_path: Path) -> None:
    facts = api.facts(tmp_path)
    assert facts["firmware_supported"] is False and facts["dump_waiting"] is False
    assert facts["owner"] is None and facts["sections"] == {} and facts["header"] is None
    json.dumps(facts)
