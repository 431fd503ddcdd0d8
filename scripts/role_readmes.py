"""Write each hvdump.power role's README.md from its meta/argument_specs.yml.

The argument spec is the one description of a role's variables (Ansible validates them
with it and ``ansible-doc -t role`` shows it); the README's variables table is generated
from it so the two cannot drift. The text above the table comes from the spec's
``short_description`` and ``description`` and from ``README.intro.md`` beside the spec
(usage, examples). ``--check`` exits 1 when a README is not what this script would write.

    python scripts/role_readmes.py [--check]
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

import yaml

ROLES = Path(__file__).resolve().parent.parent / "ansible/ansible_collections/hvdump/power/roles"


def _plain(text: str) -> str:
    """Ansible doc markup (C(), O(), V(), M(), I()) as Markdown."""
    text = re.sub(r"[COVMI]\(([^()]*)\)", r"`\1`", text)
    return " ".join(text.split())


def _default(opt: dict[str, Any]) -> str:
    if "default" not in opt:
        return "required" if opt.get("required") else "(none)"
    value = opt["default"]
    return (
        "`"
        + (yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip())
        + "`"
    )


def _shared(name: str, descriptions: list[str]) -> str:
    for d in descriptions:
        m = re.search(r"C\((hvdump_[a-z_]+)\)", d)
        if m and "Defaults to" in d:
            return f"`{m.group(1)}`"
    return ""


def render(role: Path) -> str:
    spec = yaml.safe_load((role / "meta/argument_specs.yml").read_text())["argument_specs"]
    intro = role / "meta/README.intro.md"
    main = spec["main"]
    out = [f"# hvdump.power.{role.name}", "", _plain(main["short_description"]) + ".", ""]
    for d in main.get("description", []):
        out += [_plain(d), ""]
    if intro.exists():
        out += [intro.read_text().rstrip(), ""]
    for entry, es in spec.items():
        title = "Variables" if entry == "main" else f"Entry point `{entry}`"
        out += [f"## {title}", ""]
        if entry != "main":
            out += [_plain(es["short_description"]) + ".", ""]
            for d in es.get("description", []):
                out += [_plain(d), ""]
            if es.get("options") == main.get("options"):
                out += ["Its variables are those of the main entry point.", ""]
                continue
        out += [
            "| variable | default | set once for all roles as | what it is |",
            "| --- | --- | --- | --- |",
        ]
        for name, opt in (es.get("options") or {}).items():
            desc = opt.get("description", [])
            desc = [desc] if isinstance(desc, str) else desc
            what = " ".join(_plain(d) for d in desc if "Defaults to the shared variable" not in d)
            out.append(f"| `{name}` | {_default(opt)} | {_shared(name, desc)} | {what} |")
        out.append("")
    out += [
        "This file is generated from `meta/argument_specs.yml` (and `meta/README.intro.md`) by",
        "`scripts/role_readmes.py`; `ansible-doc -t role hvdump.power."
        + role.name
        + "` shows the same.",
        "",
    ]
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--check", action="store_true", help="only check the READMEs are current")
    args = ap.parse_args()
    stale = []
    for role in sorted(p for p in ROLES.iterdir() if (p / "meta/argument_specs.yml").exists()):
        text = render(role)
        readme = role / "README.md"
        if readme.exists() and readme.read_text() == text:
            continue
        if args.check:
            stale.append(str(readme))
        else:
            readme.write_text(text)
    if stale:
        print(
            f"not current (run python scripts/role_readmes.py): {', '.join(stale)}", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
