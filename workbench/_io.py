"""Safe writing for the verbs that write: outputs checked before any work, held by one process, one file mode.

* :func:`check_writable` refuses, with one line naming the path and the system's reason, an output whose folder
  cannot be created or written, before a verb reads or computes anything;
* :class:`OutputLock` holds ``<out>.lock`` (an exclusive, non-blocking ``flock``) while a verb writes ``out``, so a
  second process writing the same output is refused instead of colliding; the file is removed by its holder, and a
  file left by a killed holder (its ``flock`` is free) is simply taken over;
* :func:`writing` does both for a verb's outputs, and removes the folders it created that stayed empty;
* :func:`remove_temps` deletes the temporary files and folders (``.<name>.tmp-<pid>``) a killed run left behind;
* :func:`set_output_mode` gives a file the mode a plain ``open()`` would under the current umask (libraries such as
  safetensors create theirs owner-only).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from workbench.errors import WorkbenchError

__all__ = ["check_writable", "OutputLock", "lock_path", "writing", "remove_temps", "output_mode", "set_output_mode",
           "TEMP_PATTERNS"]

LOCK_SUFFIX = ".lock"
TEMP_PATTERNS = (".*.tmp-*", ".*.tmp")
"""Names of the temporary files and folders the workbench writes before renaming them into place."""


def _reason(exc: OSError) -> str:
    return (exc.strerror or str(exc)).lower()


def check_writable(out: str | os.PathLike[str]) -> list[Path]:
    """Refuse an output that cannot be written, before any work: a one-line :class:`WorkbenchError` naming the path
    and the reason.

    Creates the missing folders above ``out`` and creates and removes a probe file beside it. Returns the folders
    it created, outermost first (see :func:`writing`, which removes them again when they stay empty).
    """
    out = Path(out)
    parent = Path(os.path.abspath(out)).parent
    missing: list[Path] = []
    folder = parent
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    if not folder.is_dir():
        raise WorkbenchError(f"cannot write {out}: {folder} is not a folder")
    created: list[Path] = []
    where = parent
    try:
        for where in reversed(missing):
            where.mkdir()
            created.append(where)
        where = parent
        probe = parent / f".{out.name}.probe-{os.getpid()}"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        _remove_empty(created)
        raise WorkbenchError(f"cannot write {out}: {_reason(exc)} ({where})") from None
    return created


def _remove_empty(folders: Sequence[Path]) -> None:
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:
            return


def lock_path(out: str | os.PathLike[str]) -> Path:
    """The lock file of ``out``: ``<out>.lock`` beside it."""
    out = Path(out)
    return out.with_name(out.name + LOCK_SUFFIX)


class OutputLock:
    """An exclusive hold on writing ``out`` (``flock`` on ``<out>.lock``); use as a context manager.

    Taking it never waits: a second process is refused with :class:`WorkbenchError` naming the holder's process
    id. The holder writes its process id into the file and removes the file when it lets go.
    """

    def __init__(self, out: str | os.PathLike[str]) -> None:
        self.out = Path(out)
        self.path = lock_path(out)
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise :class:`WorkbenchError` when another process holds it."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no locking
            return
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as exc:
                raise WorkbenchError(f"cannot write {self.out}: {_reason(exc)} ({self.path})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = _holder(fd)
                os.close(fd)
                raise WorkbenchError(f"{self.out} is being written by another process (pid {pid})") from None
            except OSError as exc:
                os.close(fd)
                raise WorkbenchError(f"cannot lock {self.path}: {_reason(exc)}") from None
            try:  # the previous holder may have removed the file between our open and our flock
                current = os.stat(self.path)
            except FileNotFoundError:
                current = None
            if current is not None and os.path.samestat(os.fstat(fd), current):
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        """Remove the lock file and let go (idempotent)."""
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _holder(fd: int) -> str:
    """The process id written in a held lock file (the holder may not have written it yet: wait a little)."""
    for _ in range(20):
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        if text.isdigit():
            return text
        time.sleep(0.01)
    return "unknown"


@contextlib.contextmanager
def writing(outputs: Iterable[str | os.PathLike[str] | None]) -> Iterator[None]:
    """Check that each output can be written and hold its lock while the block runs (see the module docstring).

    ``None`` entries are skipped. Under ``torchrun`` only rank 0 takes the locks (every rank writes the same
    outputs). Folders created above the outputs are removed at the end when nothing was written into them.
    """
    paths = [Path(p) for p in outputs if p is not None]
    lock = int(os.environ.get("RANK", "0") or 0) == 0
    created: list[Path] = []
    with contextlib.ExitStack() as stack:
        stack.callback(_remove_empty, created)
        for path in paths:
            created.extend(check_writable(path))
            if lock:
                stack.enter_context(OutputLock(path))
        yield


def remove_temps(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files and folders (:data:`TEMP_PATTERNS`) directly in ``folder``; returns them.

    Call it only while no other process writes into ``folder`` (under a lock, or before the ranks start).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = sorted({p for pattern in TEMP_PATTERNS for p in folder.glob(pattern)})
    for path in removed:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return removed


def output_mode() -> int:
    """The permission bits a plain ``open()`` gives a new file under the current umask (typically ``0o644``)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # read it by setting it: put it back at once
    os.umask(mask)
    return 0o666 & ~mask


def set_output_mode(path: str | os.PathLike[str]) -> None:
    """Give ``path`` :func:`output_mode` (files written through ``mkstemp`` or safetensors are owner-only)."""
    os.chmod(path, output_mode())
