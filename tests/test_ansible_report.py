"""The fleet report's rows, table, totals and CSV (plugins/filter/report.py), without Ansible."""

from __future__ import annotations

import csv
import importlib.util
import io
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parent.parent
GIB = 1 << 30


def _load() -> ModuleType:
    path = REPO / "ansible/ansible_collections/hvdump/power/plugins/filter/report.py"
    spec = importlib.util.spec_from_file_location("hvdump_report_filter", path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


report = _load()

PREPARE = {"status": "dump waiting", "reserved_bytes_before": 3 * GIB, "reserved_bytes": 3 * GIB}


def _hostvars() -> dict[str, dict[str, object]]:
    return {
        "ok1": {
            "prepare_report": PREPARE,
            # Ansible hands set_fact values over as strings where they were templated.
            "collect_report": {
                "status": "collected",
                "dump_id": "ok1-1",
                "output": "/var/crash/hvdump/ok1-1",
                "dump_size": str(GIB),
                "elapsed_s": 12.5,
                "released_bytes": str(3 * GIB),
                "reserved_bytes": "0",
            },
            "archive_report": {"archive": ["dumps@arch:/srv/hvdump/ok1-1"]},
        },
        "quiet": {
            "prepare_report": {
                "status": "no dump",
                "reserved_bytes_before": 0,
                "reserved_bytes": 0,
                "reason": "",
            }
        },
        "bad": {
            "prepare_report": PREPARE,
            "hvdump_failure": {
                "status": "failed",
                "failed_task": "Run the collector",
                "reason": "disk full\n  on /var/crash",
                "held_bytes": str(2 * GIB),
            },
        },
        "gone": {
            "hvdump_failure": {
                "status": "unreachable",
                "failed_task": "Check",
                "reason": "unreachable: ssh: connect to host gone port 22: Connection refused",
                "held_bytes": None,
            }
        },
        "lost": {"prepare_report": PREPARE},  # stopped answering after its first step
        "local": {
            "prepare_report": PREPARE,
            "collect_report": {
                "status": "collected",
                "output": "/var/crash/hvdump/local-1",
                "reserved_bytes": 0,
            },
        },
        "never": {},  # no fact at all: not one task reported
    }


def test_rows_failures_first_with_reasons_and_measured_memory() -> None:
    rows = report.report_rows(_hostvars(), list(_hostvars()))
    by = {r["host"]: r for r in rows}
    assert [r["host"] for r in rows[:3]] == ["bad", "gone", "never"]
    assert all(not r["ok"] for r in rows[:3]) and all(r["ok"] for r in rows[3:])
    # Freed and held: measured after the run, not copied from before it.
    assert by["bad"]["held_bytes"] == 2 * GIB and by["bad"]["freed_bytes"] == GIB
    assert by["bad"]["reason"] == "Run the collector: disk full on /var/crash"
    assert by["gone"]["status"] == "unreachable" and by["gone"]["held_bytes"] is None
    assert by["gone"]["reason"].startswith("unreachable: ssh: connect")
    assert by["never"]["status"] == "unreachable" and "rerun" in by["never"]["reason"]
    assert by["ok1"]["freed_bytes"] == 3 * GIB and by["ok1"]["held_bytes"] == 0
    assert by["ok1"]["elapsed_s"] == 12.5 and by["ok1"]["dump_bytes"] == GIB
    assert report._num("7.25") == 7.25 and report._num("") is None and report._num(True) is None
    assert by["ok1"]["location"] == "dumps@arch:/srv/hvdump/ok1-1"
    # No archive: the local dump directory is where the dump is.
    assert by["local"]["location"] == "/var/crash/hvdump/local-1"
    assert by["quiet"]["location"] == "" and by["quiet"]["freed_bytes"] == 0
    # A host that answered prepare but not collect keeps what it held then.
    assert by["lost"]["status"] == "dump waiting" and by["lost"]["held_bytes"] == 3 * GIB


def test_table_totals_and_one_line_per_host() -> None:
    rows = report.report_rows(_hostvars(), list(_hostvars()))
    lines = report.report_lines(rows)
    assert lines[0].startswith("hvdump collection summary (7 hosts: ")
    assert "1 failed" in lines[0] and "2 unreachable" in lines[0] and "2 collected" in lines[0]
    body = lines[2:-1]
    assert len(body) == 7 and [ln.split()[0] for ln in body[:3]] == ["bad", "gone", "never"]
    assert all("\n" not in ln for ln in lines)
    total = lines[-1].split()
    assert total[:3] == ["total", "7", "hosts"]
    # held: 2 (bad) + 3 (lost) + 0 + 0 + 0 known, two hosts unknown
    assert "5.00+?" in lines[-1] and "3 need attention: bad, gone, never" in lines[-1]
    totals = report.report_totals(rows)
    assert totals["failed"] == ["bad", "gone", "never"]
    assert totals["held_bytes"] == 5 * GIB and totals["unknown_held"] == ["gone", "never"]
    assert report.report_lines([])[0] == "hvdump collection summary (0 hosts)"
    one = report.report_rows({"q": _hostvars()["quiet"]}, ["q"])
    assert report.report_lines(one)[0] == "hvdump collection summary (1 host: 1 no dump)"
    assert report.report_lines(one)[-1].rstrip().endswith("all hosts done")


def test_a_long_reason_keeps_its_start_and_its_end() -> None:
    failure = dict(
        _hostvars()["bad"]["hvdump_failure"],
        reason="copying " + "x" * 900 + " No space left on device",
    )
    rows = report.report_rows({"bad": {"hvdump_failure": failure}}, ["bad"])
    line = report.report_lines(rows)[2]
    assert "Run the collector: copying x" in line and line.endswith("No space left on device")
    assert " ... " in line and len(line) < 500
    assert rows[0]["reason"].endswith("No space left on device") and len(rows[0]["reason"]) > 900


def test_long_host_names_keep_the_columns() -> None:
    name = "lpar-db01.prod.example.com"
    rows = report.report_rows({name: _hostvars()["quiet"]}, [name])
    lines = report.report_lines(rows)
    assert lines[1].index("status") == lines[2].index("no dump")


def test_csv_has_the_table_columns() -> None:
    rows = report.report_rows(_hostvars(), list(_hostvars()))
    parsed = list(csv.DictReader(io.StringIO(report.report_csv(rows))))
    assert list(parsed[0]) == list(report.COLUMNS)
    assert [p["host"] for p in parsed] == [r["host"] for r in rows]
    bad = next(p for p in parsed if p["host"] == "bad")
    assert (
        bad["held_bytes"] == str(2 * GIB)
        and bad["reason"] == "Run the collector: disk full on /var/crash"
    )
    gone = next(p for p in parsed if p["host"] == "gone")
    assert gone["held_bytes"] == ""


def test_filters_are_registered() -> None:
    names = set(report.FilterModule().filters())
    assert names == {"report_rows", "report_lines", "report_csv", "report_totals"}
