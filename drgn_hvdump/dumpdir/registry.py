"""The runtime registry: which output directory collects the dump under a capture root.

One small JSON file (0600) per capture root in the user's own runtime
directory (mode 0700): the root, the output directory, the dump's identity,
the collector's pid and start time, and ``MemTotal`` and the boot id when it
started. A tool given only ``ROOT/proc/vmcore`` (the drgn plugin) finds the
collection there; a collector refused because another holds the dump names
it from there. Entries are trusted only when they are this user's own, in a
directory nobody else may write, and (for a reader that knows it) of the same
dump: a stale or foreign entry is ignored with a warning.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

from drgn_hvdump.dumpdir.names import PLAN_FILE
from drgn_hvdump.fsutil import write_atomic

__all__ = [
    "find_collection",
    "read_registration",
    "register_collection",
    "registration_path",
    "runtime_dir",
    "trusted_runtime_dir",
    "unregister_collection",
]


def runtime_dir() -> Path:
    """Where collections register: ``$HVDUMP_RUNTIME_DIR``, else ``/run/hvdump`` for root,
    else ``$XDG_RUNTIME_DIR/hvdump``, else ``/tmp/hvdump-UID``."""
    env = os.environ.get("HVDUMP_RUNTIME_DIR")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/run/hvdump")
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return Path(xdg) / "hvdump"
    return Path(f"/tmp/hvdump-{os.geteuid()}")


def _root_key(root: str | os.PathLike[str]) -> str:
    real = os.path.realpath(root)
    return hashlib.sha256(real.encode()).hexdigest()[:24]


def _untrusted(st: os.stat_result, what: str, path: Path, *, directory: bool) -> str:
    """Why a runtime-directory object is not ours (empty when it is)."""
    kind_ok = stat.S_ISDIR(st.st_mode) if directory else stat.S_ISREG(st.st_mode)
    if not kind_ok:
        return f"{path}: the {what} is not a {'directory' if directory else 'regular file'}"
    if st.st_uid != os.geteuid():
        return f"{path}: the {what} belongs to uid {st.st_uid}, not to this user"
    if st.st_mode & (0o077 if directory else 0o022):
        return f"{path}: the {what} is open to other users (mode {st.st_mode & 0o777:o})"
    return ""


def trusted_runtime_dir(create: bool = False) -> tuple[Path | None, str]:
    """:func:`runtime_dir` if it is this user's own (a directory, not a link, mode
    0700), creating it when asked; else None and why it is not trusted."""
    d = runtime_dir()
    if create:
        try:
            d.parent.mkdir(parents=True, exist_ok=True)
            os.mkdir(d, 0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            return None, f"{d}: cannot create the runtime directory: {exc.strerror}"
    try:
        st = os.lstat(d)
    except OSError:
        return None, f"{d}: no runtime directory"
    why = _untrusted(st, "runtime directory", d, directory=True)
    return (None, why) if why else (d, "")


def register_collection(
    root: str | os.PathLike[str],
    output: str | os.PathLike[str],
    identity: str,
    since: float,
    **facts: Any,
) -> str:
    """Record that ``output`` collects the dump ``identity`` under ``root``.

    Best effort: an untrusted or read-only runtime directory only costs other
    tools the automatic lookup; the reason is returned (empty on success).
    """
    d, why = trusted_runtime_dir(create=True)
    if d is None:
        return why
    entry = {
        "root": os.path.realpath(root),
        "output": output if str(output).startswith("ssh://") else os.path.realpath(output),
        "identity": identity,
        "pid": os.getpid(),
        "uid": os.geteuid(),
        "since": since,
        **facts,
    }
    try:
        write_atomic(registration_path(root), json.dumps(entry).encode())
    except OSError as exc:
        return f"{registration_path(root)}: cannot register the collection: {exc.strerror}"
    return ""


def unregister_collection(root: str | os.PathLike[str], identity: str) -> None:
    """Remove this process's entry for ``root`` (only if it names ``identity``)."""
    entry, _ = read_registration(root)
    if entry is None or entry.get("identity") != identity:
        return
    with contextlib.suppress(OSError):
        os.unlink(registration_path(root))


def registration_path(root: str | os.PathLike[str]) -> Path:
    """The runtime-directory file a collection of ``root`` registers in."""
    return runtime_dir() / f"collect-{_root_key(root)}.json"


def read_registration(root: str | os.PathLike[str]) -> tuple[dict[str, Any] | None, str]:
    """The registry entry for ``root`` if it can be trusted, else None and why not
    (empty when there is simply none).

    Trusted means: in this user's own runtime directory, a regular file of this
    user's that nobody else may write, opened without following links, valid
    JSON naming ``root``.
    """
    d, why = trusted_runtime_dir()
    if d is None:
        return None, "" if why.endswith("no runtime directory") else why
    path = registration_path(root)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None, ""
    except OSError as exc:
        return None, f"{path}: ignored: {exc.strerror}"
    try:
        st = os.fstat(fd)
        why = _untrusted(st, "registry entry", path, directory=False)
        if why:
            return None, why + "; ignored"
        data = os.read(fd, 1 << 16)
    finally:
        os.close(fd)
    try:
        entry = json.loads(data)
    except ValueError:
        return None, f"{path}: not JSON; ignored"
    if not isinstance(entry, dict) or entry.get("root") != os.path.realpath(root):
        return None, f"{path}: names another root; ignored"
    return entry, ""


def find_collection(
    root: str | os.PathLike[str],
    identity: str | None = None,
    warnings: list[str] | None = None,
) -> Path | None:
    """The output directory registered for ``root`` (``$HVDUMP_OUTPUT`` wins), or None.

    With ``identity``, an entry (or a plan) of another dump is ignored, with a
    warning appended to ``warnings``: a stale entry of an LPAR once mounted at
    the same path must not serve another dump's bytes.
    """
    env = os.environ.get("HVDUMP_OUTPUT")
    if env:
        return Path(env)
    entry, why = read_registration(root)
    if entry is None:
        if why and warnings is not None:
            warnings.append(why)
        return None
    where = str(entry.get("output", ""))
    if where.startswith("ssh://"):
        if warnings is not None:
            warnings.append(
                f"this dump is being collected to the archive host {where}: memory it released "
                "can be read only from the dump there (open that directory with drgn, or set "
                "HVDUMP_OUTPUT to a copy of it here)"
            )
        return None
    out = Path(where)
    if identity is not None and entry.get("identity") != identity:
        if warnings is not None:
            warnings.append(
                f"{registration_path(root)}: registers {out} for another dump than the one "
                f"under {root} (a stale entry?); ignored"
            )
        return None
    return out if (out / PLAN_FILE).exists() else None
