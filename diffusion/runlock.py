"""One trainer per run folder: an exclusive lock file ``RUN/train.lock`` naming its holder.

    lock = RunLock(run_dir).acquire()      # RunLockedError naming the holder if another trainer has it
    ...
    lock.release()                          # also on errors; the kernel drops it when the process dies

The lock is ``fcntl.flock`` on the file: the kernel holds it for the process and releases it the moment
the process ends, however it ends (kill -9 included), so a lock left by a dead trainer is never a lock.
The file's text (JSON: pid, host, start time, command line) only names the holder for the messages.
A lock file whose holder is gone is taken over in one step (the flock succeeds), with a log line naming
the previous holder. Within one process a new ``RunLock`` on the same folder takes the lock from the
older one (a notebook re-running ``Trainer(...)`` after an error); the older one then reports
``lost`` and its trainer refuses to save. ``release`` unlinks the file while still holding it; an acquirer that locked a file
which was unlinked meanwhile sees a different inode at the path and tries again, so two trainers can
never both believe they hold the lock. Under torchrun only rank 0 locks (the trainer does that).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["RunLock", "RunLockedError", "LOCK_NAME"]

log = logging.getLogger("zigscan.train")
LOCK_NAME = "train.lock"
_HELD: dict[str, RunLock] = {}  # locks this process holds, by lock-file path


class RunLockedError(RuntimeError):
    """Another live trainer holds the run folder's lock. ``holder`` is what its lock file says."""

    def __init__(self, message: str, holder: dict[str, Any]) -> None:
        super().__init__(message)
        self.holder = holder


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "a process that wrote no details"
    parts = [f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}"]
    if holder.get("started"):
        parts.append(f"since {holder['started']}")
    if holder.get("argv"):
        parts.append(f"running `{' '.join(map(str, holder['argv']))}`")
    return ", ".join(parts)


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        raw = os.read(fd, 1 << 16)
        data = json.loads(raw.decode("utf-8")) if raw.strip() else {}
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _pid_alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


class RunLock:
    """The exclusive lock of one run folder (see the module docstring)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: int | None = None
        self.lost = False  # a newer RunLock of this process took the folder over

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        """Take the lock or raise ``RunLockedError`` naming the live holder. Returns ``self``."""
        import fcntl

        if self._fd is not None:
            return self
        self.run_dir.mkdir(parents=True, exist_ok=True)
        key = str(self.path.resolve())
        older = _HELD.get(key)
        if older is not None and older is not self:
            log.warning("run folder %s: a trainer of this process held it; the new one takes it over "
                        "(the old one can no longer save)", self.run_dir)
            older.release()
            older.lost = True
        for _ in range(100):  # retried only when a releasing holder unlinked the file under us
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = _read_holder(fd)
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise OSError(exc.errno, f"cannot lock the run folder ({self.path}): {exc.strerror}. "
                                  "Use a run folder on a file system with file locks (--out).") from None
                raise RunLockedError(
                    f"run folder {str(self.run_dir)!r} is in use by another trainer: {_describe(holder)} "
                    f"(lock file {self.path}). Wait for it to finish or stop it, or train into another folder "
                    "with --out.", holder) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the holder released (unlinked) the file between our open and our flock
                os.close(fd)
                continue
            previous = _read_holder(fd)
            if previous:
                alive = previous.get("host") == socket.gethostname() and _pid_alive(previous.get("pid"))
                note = "" if not alive else " (that pid is alive but does not hold the lock)"
                log.warning("run folder %s: taking over the lock left by %s, which no longer holds it%s",
                            self.run_dir, _describe(previous), note)
            me = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "argv": sys.argv[:8]}
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, (json.dumps(me) + "\n").encode())
            os.fsync(fd)
            self._fd = fd
            _HELD[key] = self
            return self
        raise RuntimeError(f"could not lock {self.path}: its file kept changing")  # pragma: no cover

    def release(self) -> None:
        """Give the lock back and remove the file (safe to call twice)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        for key, lock in list(_HELD.items()):
            if lock is self:
                del _HELD[key]
        try:
            if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                os.unlink(self.path)  # while still holding it: see the module docstring
        except OSError:
            pass
        os.close(fd)  # drops the flock

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
