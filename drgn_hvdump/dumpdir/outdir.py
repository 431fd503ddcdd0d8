"""The output directory of a collection: only state we can prove is ours.

A collection trusts its output directory only when it created it, or when it
is owned by the caller and writable by nobody else; it keeps the directory
open and creates and opens every file relative to that descriptor, without
following links. Before each release it checks that the files it wrote are
still the files on disk, linked where it wrote them (same device and inode,
directory not removed or moved): bytes in an unlinked file are not durable.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path

from drgn_hvdump.dumpdir.filewrite import DumpFile, LocalFile
from drgn_hvdump.errors import HvdumpError
from drgn_hvdump.fsutil import write_atomic

__all__ = ["FileId", "OutputDir", "check_owned_dir", "probe_dir"]

FileId = tuple[int, int]
"""A file's identity: ``(st_dev, st_ino)``."""


def check_owned_dir(st: os.stat_result, path: Path) -> None:
    """Refuse a directory we cannot trust: a link, not ours, or writable by others."""
    if stat.S_ISLNK(st.st_mode):
        raise HvdumpError(
            f"{path}: is a symbolic link; give the real output directory (links are not followed)"
        )
    if not stat.S_ISDIR(st.st_mode):
        raise HvdumpError(f"{path}: exists and is not a directory")
    if st.st_uid != os.geteuid():
        raise HvdumpError(
            f"{path}: belongs to uid {st.st_uid}, not to this user (uid {os.geteuid()}); "
            "a dump is written only into a directory of its collector's own"
        )
    if st.st_mode & 0o022:
        raise HvdumpError(
            f"{path}: others may write into it (mode {st.st_mode & 0o777:o}); "
            "use a directory only its owner can write (chmod 700) or a new one"
        )


def probe_dir(path: Path) -> dict[str, object]:
    """Whether a collection could write ``path``, changing nothing that stays, or raise one
    line: an existing directory must pass :meth:`OutputDir.open`'s trust rules and take a
    file (made and removed at once); a missing one needs a writable, searchable parent on a
    file system that is not read-only. Returns ``{path, exists, free_bytes}``."""
    path = Path(os.path.abspath(path))
    st: os.stat_result | None
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        st = None
    except OSError as exc:
        raise HvdumpError(f"{path}: cannot be read: {exc.strerror}") from None
    if st is not None:
        check_owned_dir(st, path)
        probe = path / f".hvdump-probe.{os.getpid()}"
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise HvdumpError(f"{path}: cannot create a file there: {exc.strerror}") from None
        os.close(fd)
        os.unlink(probe)
        where = path
    else:
        where = path.parent
        while not where.exists() and where != where.parent:
            where = where.parent
        if not where.is_dir():
            raise HvdumpError(f"{path}: cannot be created: {where} is not a directory")
        if os.statvfs(where).f_flag & os.ST_RDONLY:
            raise HvdumpError(f"{path}: cannot be created: {where} is on a read-only file system")
        if not os.access(where, os.W_OK | os.X_OK):
            raise HvdumpError(f"{path}: cannot be created: {where} is not writable by this user")
    vfs = os.statvfs(where)
    return {"path": str(path), "exists": st is not None, "free_bytes": vfs.f_bavail * vfs.f_frsize}


class OutputDir:
    """An output directory opened once; files live by name inside it."""

    def __init__(self, path: Path, fd: int, created: bool) -> None:
        self.path = path
        self.fd = fd
        self.created = created
        st = os.fstat(fd)
        self.id: FileId = (st.st_dev, st.st_ino)

    @classmethod
    def open(cls, path: Path, *, create: bool = True) -> OutputDir:
        """Open (creating 0700 if asked) a directory we can trust, or raise one line."""
        path = Path(os.path.abspath(path))
        created = False
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            if not create:
                raise HvdumpError(f"{path}: no such directory") from None
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                os.mkdir(path, 0o700)
                created = True
            except FileExistsError:
                pass  # made meanwhile: checked below like any other
            except OSError as exc:
                raise HvdumpError(
                    f"{path}: cannot create the output directory: {exc.strerror}"
                ) from None
            st = os.lstat(path)
        check_owned_dir(st, path)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise HvdumpError(f"{path}: cannot open the output directory: {exc.strerror}") from None
        fst = os.fstat(fd)
        if (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
            os.close(fd)
            raise HvdumpError(f"{path}: was replaced while being opened; run again")
        check_owned_dir(fst, path)
        if create and fst.st_mode & 0o777 != 0o700:
            os.fchmod(fd, 0o700)  # a collector's directory; a reader changes nothing
        return cls(path, fd, created)

    @property
    def location(self) -> str:
        """Where the dump is, for people and for the runtime registry."""
        return str(self.path)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    # -- files ---------------------------------------------------------------------

    def lstat(self, name: str) -> os.stat_result | None:
        try:
            return os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def exists(self, name: str) -> bool:
        return self.lstat(name) is not None

    def open_file(self, name: str, *, create: bool, exclusive: bool = False) -> LocalFile:
        """Open ``name`` for reading and writing, never through a link.

        ``create`` makes it (0600) if missing; ``exclusive`` refuses one that
        exists. An existing file must be a regular file of ours.
        """
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        if create:
            flags |= os.O_CREAT | (os.O_EXCL if exclusive else 0)
        try:
            fd = os.open(name, flags, 0o600, dir_fd=self.fd)
        except OSError as exc:
            raise self._open_error(name, exc) from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_nlink != 1:
            os.close(fd)
            raise HvdumpError(
                f"{self.path / name}: not a regular file of this user's with one link; "
                "not written into"
            )
        os.set_blocking(fd, True)
        if st.st_mode & 0o777 != 0o600:
            os.fchmod(fd, 0o600)
        return LocalFile(fd, str(self.path / name))

    def _open_error(self, name: str, exc: OSError) -> HvdumpError:
        path = self.path / name
        if exc.errno == errno.ELOOP:
            return HvdumpError(f"{path}: is a symbolic link; links are never followed: remove it")
        if exc.errno == errno.EEXIST:
            return HvdumpError(
                f"{path}: exists, but no journal of this collection created it; "
                "use an empty --output directory"
            )
        if exc.errno == errno.ENOENT:
            return HvdumpError(f"{path}: missing")
        return HvdumpError(f"{path}: cannot open: {exc.strerror}")

    def read_bytes(self, name: str, limit: int = 64 << 20) -> bytes:
        """A small file's contents (at most ``limit`` bytes), never through a link."""
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.fd)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, "not a regular file", str(self.path / name))
            out = bytearray()
            while len(out) <= limit:
                piece = os.read(fd, 1 << 20)
                if not piece:
                    return bytes(out)
                out += piece
            raise OSError(errno.EFBIG, f"larger than {limit} bytes", str(self.path / name))
        finally:
            os.close(fd)

    def write_atomic(self, name: str, data: bytes) -> None:
        write_atomic(name, data, dir_fd=self.fd)

    def unlink(self, name: str) -> None:
        """Remove ``name`` (a link is removed, never followed); nothing if it is not there."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=self.fd)

    # -- still there? ---------------------------------------------------------------

    def changed(self, files: Mapping[str, DumpFile]) -> str:
        """Why the directory or one of ``files`` (name -> open file) is no longer
        what was written, as one phrase; empty when all are still in place."""
        dst = os.fstat(self.fd)
        if dst.st_nlink == 0:
            return f"the output directory {self.path} was removed"
        try:
            now = os.lstat(self.path)
        except OSError:
            return f"the output directory {self.path} was removed or moved"
        if (now.st_dev, now.st_ino) != self.id:
            return f"the output directory {self.path} was replaced"
        for name, file in files.items():
            assert isinstance(file, LocalFile)
            fst = os.fstat(file.fd)
            on_disk = self.lstat(name)
            if on_disk is not None and (on_disk.st_dev, on_disk.st_ino) != (fst.st_dev, fst.st_ino):
                return f"{self.path / name} was replaced by another file"
            if on_disk is None or fst.st_nlink == 0:
                return f"{self.path / name} was removed"
        return ""

    def file_ids(self, names: list[str]) -> Iterator[tuple[str, FileId | None]]:
        for name in names:
            st = self.lstat(name)
            yield name, None if st is None else (st.st_dev, st.st_ino)
