"""Atomic file writes: a failed or interrupted write never leaves a partial file at the destination.

The data goes to a temporary file beside ``path`` (same file system, so placing it is atomic), given the mode a
plain ``open(path, "w")`` would give (``0o666 & ~umask``; ``mkstemp`` makes it 0600), flushed to disk, then
placed. Without ``overwrite`` the placement is a hard link, which fails if ``path`` appeared meanwhile (another
process writing the same output), so a file created concurrently is never replaced. A write that fills the disk
raises ``OSError(ENOSPC)`` naming ``path``, whatever the writer reported (torch says "unexpected pos ...").

A folder (:func:`write_folder_atomically`, e.g. a Hugging Face folder) is written the same way: filled in a
temporary folder beside ``path``, then renamed into place without replacing a folder that appeared meanwhile, or,
with ``overwrite``, swapped with the existing folder in one step (``RENAME_EXCHANGE``) and the old one removed.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator

_NO_HARD_LINKS = (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.ENOSYS)
_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2  # linux/fs.h
_FULL_BELOW_BYTES = 1 << 16  # a failed write that leaves less free space than this ran out of it


def write_atomically(path: str | os.PathLike, write: Callable[[str], object], *, fsync: bool = True,
                     overwrite: bool = True) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, flush it to disk, then place it at ``path``.

    ``overwrite=False``: raise ``FileExistsError`` instead of replacing a file that exists at placement time.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        with _signals_deferred():
            fd, tmp = tempfile.mkstemp(prefix=".surgeon-", suffix=os.path.splitext(path)[1] + ".tmp", dir=directory)
            os.close(fd)
        try:
            write(tmp)
            os.chmod(tmp, 0o666 & ~current_umask())
            if fsync:
                with open(tmp, "rb+") as handle:
                    os.fsync(handle.fileno())
        except Exception as exc:
            if _ran_out_of_space(exc, directory):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path) from exc
            raise
        # Held signals: an interrupt between a hard link and the removal of the temporary name would leave both.
        with _signals_deferred():
            _place(tmp, path, overwrite=overwrite)
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
            tmp = None
    finally:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)


def write_folder_atomically(path: str | os.PathLike, write: Callable[[str], object], *, overwrite: bool = True) -> None:
    """Call ``write(tmp)`` on an empty temporary folder beside ``path``, flush its files, then place it at ``path``.

    The folder gets the mode ``mkdir`` would give (``0o777 & ~umask``). ``overwrite=False``: raise
    ``FileExistsError`` rather than replace anything at ``path`` at placement time; ``overwrite=True``: an
    existing folder at ``path`` is swapped out atomically and then removed. Interrupted or failed, the
    temporary folder is removed and ``path`` is as it was.
    """
    path = os.fspath(path).rstrip(os.sep) or os.sep
    directory = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        with _signals_deferred():
            tmp = tempfile.mkdtemp(prefix=".surgeon-", suffix=".tmp", dir=directory)
        try:
            write(tmp)
            os.chmod(tmp, 0o777 & ~current_umask())
            _fsync_tree(tmp)
        except Exception as exc:
            if _ran_out_of_space(exc, directory):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path) from exc
            raise
        if overwrite and os.path.isdir(path) and not os.path.islink(path):
            _exchange(tmp, path)     # tmp now holds the old folder, removed below
        else:
            _rename_noreplace(tmp, path)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM while a temporary path is created and its name stored: an interrupt handler that raises
    between the file's creation and the assignment would leave a file nobody knows to remove."""
    held = {signal.SIGINT, signal.SIGTERM}
    if not hasattr(signal, "pthread_sigmask"):  # pragma: no cover - Windows
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _fsync_tree(folder: str) -> None:
    for root, _, files in os.walk(folder):
        for name in files:
            with open(os.path.join(root, name), "rb+") as handle:
                os.fsync(handle.fileno())
        descriptor = os.open(root, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _exchange(tmp: str, path: str) -> None:
    """Swap the folders ``tmp`` and ``path`` (atomically where ``renameat2`` exists, else by two renames)."""
    if _renameat2(tmp, path, _RENAME_EXCHANGE) == 0:
        return
    aside = tmp + ".old"
    os.rename(path, aside)
    os.rename(tmp, path)
    os.rename(aside, tmp)


def current_umask() -> int:
    """The process's umask, read without changing it where Linux allows (``os.umask`` can only set it)."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _ran_out_of_space(exc: BaseException, directory: str) -> bool:
    chain: BaseException | None = exc
    while chain is not None:
        if isinstance(chain, OSError) and chain.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(chain) or "os error 28" in str(chain):
            return True
        chain = chain.__cause__ or chain.__context__
    try:
        stats = os.statvfs(directory)
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize < _FULL_BELOW_BYTES


def _place(tmp: str, path: str, *, overwrite: bool) -> None:
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, "already exists", path) from None
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
        _rename_noreplace(tmp, path)


def _rename_noreplace(tmp: str, path: str) -> None:
    """``renameat2(RENAME_NOREPLACE)`` for file systems without hard links (and for folders); an exclusive create
    of the name otherwise."""
    failure = _renameat2(tmp, path, _RENAME_NOREPLACE)
    if failure == 0:
        return
    if failure == errno.EEXIST:
        raise FileExistsError(errno.EEXIST, "already exists", path)
    # Neither primitive: reserve the name exclusively, then replace the (empty, ours) placeholder.
    try:
        if os.path.isdir(tmp):
            os.mkdir(path, 0o700)    # a folder replaces an empty folder, not a file
        else:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, "already exists", path) from None
    os.replace(tmp, path)


def _renameat2(tmp: str, path: str, flags: int) -> int | None:
    """``renameat2(tmp, path, flags)``: 0 on success, the errno on failure, None where libc has no ``renameat2``."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    at_cwd = -100
    if renameat2(at_cwd, os.fsencode(tmp), at_cwd, os.fsencode(path), flags) == 0:
        return 0
    return ctypes.get_errno()
