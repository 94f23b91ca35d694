"""The spool directory, opened safely (the README's "Configuration", ``OTEL_SECAUDIT_SPOOL_DIR``).

The directory is created ``0700``; one that is a symlink, not a directory, or owned by another
user is refused with :class:`SpoolDirectoryError` (another local user could otherwise read the
spooled records, or plant links that make this process overwrite its own files). Each process
claims a ``worker-N`` sub-directory (created ``0700``, checked the same way) with an exclusive
``flock`` that the kernel releases when the process dies. The descriptors returned here are used
for every later file operation (``dir_fd``), so no path is resolved twice.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path
from typing import Final

__all__ = [
    "NEW_FILE_FLAGS",
    "SpoolDirectoryError",
    "claim_free_worker_dir",
    "lock_dir",
    "open_private_dir",
]

#: Flags for a file the spool creates: never an existing one, never through a link.
NEW_FILE_FLAGS: Final = os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_WORKER_DIRS: Final = 256


class SpoolDirectoryError(OSError):
    """The spool directory cannot be used safely (a symlink, another user's, not a directory)."""


def open_private_dir(name: str | os.PathLike[str], parent_fd: int | None = None) -> int:
    """Create ``name`` (mode 0700) if missing and open it without following a symlink;
    relative to ``parent_fd`` when given. Returns the directory's descriptor.

    Raises:
        SpoolDirectoryError: it is a symlink, not a directory, or owned by another user.
    """
    shown = os.fspath(name)
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, 0o700, dir_fd=parent_fd)
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise SpoolDirectoryError(
                exc.errno, f"spool directory {shown} is a symlink or not a directory; refused"
            ) from None
        raise
    owner = os.fstat(fd).st_uid
    if owner != os.geteuid():
        os.close(fd)
        raise SpoolDirectoryError(
            errno.EPERM,
            f"spool directory {shown} is owned by uid {owner}, not by this process's user "
            f"(uid {os.geteuid()}); refused (another local user could read or replace the "
            "spooled records)",
        )
    return fd


def lock_dir(root_fd: int | None, path: Path) -> tuple[Path, int, int]:
    """Open (creating 0700) the directory ``path`` and lock it: (path, dir fd, lock fd)."""
    if root_fd is None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    dir_fd = open_private_dir(path if root_fd is None else path.name, root_fd)
    try:
        os.fchmod(dir_fd, 0o700)  # ours: a worker dir made by an older version may be 0755
        lock_fd = os.open(
            "lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd
        )
    except BaseException:
        os.close(dir_fd)
        raise
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(lock_fd)
        os.close(dir_fd)
        raise
    return path, dir_fd, lock_fd


def claim_free_worker_dir(root: Path) -> tuple[Path, int, int]:
    """Claim the first free worker sub-directory of ``root`` (exclusive flock, released by
    the kernel when the process dies)."""
    root.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    root_fd = open_private_dir(root)
    try:
        for number in range(_MAX_WORKER_DIRS):
            try:
                return lock_dir(root_fd, root / f"worker-{number}")
            except BlockingIOError:
                continue
    finally:
        os.close(root_fd)
    raise OSError(f"all {_MAX_WORKER_DIRS} spool worker directories in {root} are in use")
