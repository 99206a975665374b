"""The one atomic file writer, and the check that a path can be written before work starts.

:func:`atomic_write` writes through a temporary file in the target's folder,
flushes it to disk, renames it over the target and flushes the folder: a crash
at any moment leaves the old file or the new one, never a torn file (at worst a
stray ``.NAME.*.tmp`` file, safe to delete). Errors name the path the caller
gave, never the temporary file.

This module imports nothing from funcnn.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from collections.abc import Callable
from typing import BinaryIO

__all__ = ["atomic_write", "check_writable", "write_bytes"]


def _naming(err: OSError, target: str) -> OSError:
    """The same kind of error, naming ``target`` (and its folder when that is the problem)."""
    folder = os.path.dirname(os.path.abspath(target))
    reason = err.strerror or str(err)
    if not os.path.isdir(folder):
        reason = f"{reason} (the folder {folder!r} does not exist or is not a folder)"
    elif isinstance(err, PermissionError):
        reason = f"{reason} (cannot create files in the folder {folder!r})"
    return type(err)(err.errno, reason, target)


def check_writable(path: str | os.PathLike) -> None:
    """Raise an ``OSError`` naming ``path`` unless a file can be written there atomically.

    Checks that the folder exists and that a file can be created in it (by creating and
    removing one, which is the only test that also holds for root, ACLs and read-only
    file systems), and that ``path`` is not a folder.
    """
    target = os.fspath(path)
    if os.path.isdir(target):
        raise IsADirectoryError(errno.EISDIR, "a folder is in the way of the file", target)
    fd, probe = _temp_beside(target)
    os.close(fd)
    os.unlink(probe)


def _temp_beside(target: str) -> tuple[int, str]:
    """A new temporary file in ``target``'s folder; an error names ``target``."""
    try:
        return tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".tmp",
                                dir=os.path.dirname(os.path.abspath(target)))
    except OSError as err:
        raise _naming(err, target) from None


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(f)`` on a temporary file next to ``path``, then rename it to ``path``.

    The new file keeps the permissions of the file it replaces (a new file gets the
    usual ``0o666`` under the umask). If anything fails, ``path`` is left as it was.
    """
    target = os.fspath(path)
    fd, tmp = _temp_beside(target)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(OSError):  # mkstemp makes 0600 files; keep usual permissions
            os.chmod(tmp, _file_mode(target))
        try:
            os.replace(tmp, target)
        except OSError as err:
            raise _naming(err, target) from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_folder(os.path.dirname(os.path.abspath(target)))


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda f: f.write(data))


def _file_mode(target: str) -> int:
    """The existing file's permissions, else those of a new file under the umask."""
    try:
        return stat.S_IMODE(os.stat(target).st_mode)
    except OSError:
        umask = os.umask(0o022)  # the only portable way to read the umask is to set it
        os.umask(umask)
        return 0o666 & ~umask


def _fsync_folder(folder: str) -> None:
    """Make the rename durable; best effort (not possible on Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
