# -*- coding: utf-8 -*-
# Copyright: hvdump developers
# GNU General Public License v2.0+ (see https://www.gnu.org/licenses/gpl-2.0.txt)
"""The collection report of a fleet run, built once and shown three ways.

``collect_dumps.yml`` records per host what each role did (``prepare_report``,
``collect_report``, ``archive_report``) and, when a step failed, ``hvdump_failure``.
``report_rows`` turns those into one row per host of the play (unreachable and failed hosts
included, failures first); ``report_lines`` is the table the operator reads, ``report_csv`` the
same table for a spreadsheet, and the rows themselves go to the JSON report and ``set_stats``.
The functions are pure: ``tests/test_ansible_report.py`` runs them without Ansible.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import csv
import io
import re

GIB = 1 << 30
# Statuses that make the run fail (and come first in the table).
PROBLEMS = ("failed", "unreachable")
# The table's and the CSV's columns, in order.
COLUMNS = (
    "host",
    "status",
    "dump_id",
    "dump_bytes",
    "elapsed_s",
    "freed_bytes",
    "held_bytes",
    "location",
    "reason",
)
NO_RESULT = (
    "no result: the host stopped answering after its first step, or the run was "
    "stopped; rerun: a collection resumes or attaches, nothing is collected twice"
)


def _num(value):
    """A number Ansible may hand over as a string; None when absent or empty."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    try:
        text = str(value).strip()
        return float(text) if "." in text else int(text)
    except (TypeError, ValueError):
        return None


def _one_line(text, limit=None):
    """A reason fit for one table cell: whitespace (newlines included) folded to single spaces."""
    text = re.sub(r"\s+", " ", str(text or "")).strip()
    if limit is not None and len(text) > limit:
        # The middle goes: a reason starts with what failed and ends with why (the errno).
        half = (limit - 5) // 2
        text = text[:half] + " ... " + text[-half:]
    return text


def host_row(host, prepare=None, collect=None, archive=None, failure=None):
    """The row of one host from what its roles recorded (each a dict or None)."""
    parts = [p for p in (prepare, collect, archive, failure) if p]
    row = {}
    for part in parts:
        row.update(part)
    row["host"] = host
    if not parts:
        row.update(status="unreachable", reason=NO_RESULT)
    status = row.get("status") or "unknown"
    before = _num((prepare or {}).get("reserved_bytes_before"))
    if failure:
        held = _num(failure.get("held_bytes"))
        reason = "%s: %s" % (failure.get("failed_task", "?"), failure.get("reason", ""))
        if status == "unreachable":
            reason = failure.get("reason", "")
    elif collect:
        held = _num(collect.get("reserved_bytes"))
        reason = collect.get("message", "") if status == "in progress" else ""
    else:
        held = _num((prepare or {}).get("reserved_bytes"))
        reason = (prepare or {}).get("reason", "") if parts else NO_RESULT
    if before is not None and held is not None:
        freed = max(0, before - held)
    else:
        freed = _num((collect or {}).get("released_bytes"))
    archived = [a for a in (archive or {}).get("archive") or [] if a]
    output = (collect or {}).get("output") or ""
    location = (
        " ".join(archived) if archived else (output if collect and status != "no dump" else "")
    )
    row.update(
        status=status,
        ok=status not in PROBLEMS,
        dump_bytes=_num(row.get("dump_size")),
        elapsed_s=_num(row.get("elapsed_s")),
        freed_bytes=freed,
        held_bytes=held,
        location=location,
        reason=_one_line(reason),
    )
    return row


def report_rows(hostvars, hosts):
    """One row per host of ``hosts`` from ``hostvars``, failed and unreachable hosts first."""
    rows = []
    for host in hosts:
        hv = hostvars[host]
        parts = [
            hv.get(k)
            for k in ("prepare_report", "collect_report", "archive_report", "hvdump_failure")
        ]
        rows.append(host_row(host, *parts))
    return sorted(rows, key=lambda r: 0 if not r["ok"] else 1)


def report_totals(rows):
    """Counts by status and the sums of the byte columns (None where no host reported one)."""
    by_status = {}
    for r in rows:
        by_status[r["status"]] = by_status.get(r["status"], 0) + 1

    def total(key):
        vals = [r[key] for r in rows if r.get(key) is not None]
        return sum(vals) if vals else None

    return {
        "hosts": len(rows),
        "by_status": by_status,
        "failed": [r["host"] for r in rows if not r["ok"]],
        "dump_bytes": total("dump_bytes"),
        "freed_bytes": total("freed_bytes"),
        "held_bytes": total("held_bytes"),
        "unknown_held": [r["host"] for r in rows if r.get("held_bytes") is None],
    }


def _hosts(n):
    return "%d host%s" % (n, "" if n == 1 else "s")


def _gib(value):
    return "-" if value is None else "%.2f" % (value / GIB)


def report_lines(rows, title="hvdump collection summary"):
    """The summary table: a title with the counts, a header, one line per host, a totals line."""
    totals = report_totals(rows)
    width = max([12] + [len(r["host"]) for r in rows])
    fmt = "%%-%ds %%-20s %%9s %%8s %%10s %%10s  %%s" % width
    counts = ", ".join("%d %s" % (n, s) for s, n in sorted(totals["by_status"].items()))
    lines = [
        "%s (%s%s)" % (title, _hosts(len(rows)), ": " + counts if counts else ""),
        fmt % ("host", "status", "dump GiB", "time s", "freed GiB", "held GiB", "where / reason"),
    ]
    for r in rows:
        tail = (
            r["reason"]
            if not r["ok"] or r["status"] == "in progress"
            else (r["location"] or r["reason"])
        )
        lines.append(
            fmt
            % (
                r["host"],
                r["status"],
                _gib(r["dump_bytes"]),
                "-" if r["elapsed_s"] is None else "%.1f" % r["elapsed_s"],
                _gib(r["freed_bytes"]),
                "?" if r["held_bytes"] is None else _gib(r["held_bytes"]),
                _one_line(tail, 400),
            )
        )
    held = _gib(totals["held_bytes"])
    if totals["unknown_held"]:
        held += "+?"
    lines.append(
        fmt
        % (
            "total",
            _hosts(len(rows)),
            _gib(totals["dump_bytes"]),
            "",
            _gib(totals["freed_bytes"]),
            held,
            ("%d need attention: %s" % (len(totals["failed"]), ", ".join(totals["failed"])))
            if totals["failed"]
            else "all hosts done",
        )
    )
    return lines


def report_csv(rows):
    """The table's columns as CSV text (bytes and seconds unformatted)."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(COLUMNS)
    for r in rows:
        w.writerow(["" if r.get(c) is None else r.get(c) for c in COLUMNS])
    return out.getvalue()


class FilterModule:
    """hvdump.power.report_rows, report_lines, report_csv, report_totals."""

    def filters(self):
        return {
            "report_rows": report_rows,
            "report_lines": report_lines,
            "report_csv": report_csv,
            "report_totals": report_totals,
        }
