"""One writer per folder: an OS lock that dies with its holder, and the clean-up of what a
killed writer left.

Every command that writes into a folder (``ncssm-train`` into its run folder, ``ncssm-data
generate/import/dart/segment`` into a clip folder, ``ncssm-rollout`` into its output folder, the
built-in clip cache) holds :func:`writing` on it. The lock is ``filelock``'s ``fcntl`` lock on
``FOLDER/.ncssm.lock``: the kernel drops it when the holder exits, SIGKILL included, so a
killed run never leaves the folder locked. A second writer is refused at once with one sentence
naming the holder (read from ``FOLDER/.ncssm.lock.json``, which the holder writes).

Files are written through :func:`ncssm_data.clips.atomic_path`: a hidden temp file beside the
target, renamed onto it when complete. A SIGKILL can leave such a temp file (nothing runs in a
killed process); the next writer of the folder removes it on taking the lock, which is safe
because no other writer can be at work there.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import re
import shutil
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import filelock

from ncssm_data.errors import write_error

LOCK_NAME = ".ncssm.lock"
HOLDER_NAME = ".ncssm.lock.json"
# atomic_path's temp files (".NAME.tmp-PID-HEX[SUFFIX]"), and orbax's unfinished checkpoints.
_TEMP = re.compile(r"^\..+\.tmp-\d+(-\w+)?(\.\w+)?$|\.orbax-checkpoint-tmp")


class FolderInUseError(OSError):
    """Another live process holds the folder's write lock; the message names it."""


def _holder_text(folder: Path) -> str:
    try:
        h = json.loads((folder / HOLDER_NAME).read_text())
        return (f"{h['command']} (pid {h['pid']} on {h['host']}, since {h['since']})")
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def is_temp(name: str) -> bool:
    """Whether ``name`` is a temp file or folder that a writer leaves only when killed."""
    return bool(_TEMP.search(name))


def remove_stale_temps(folder: str | os.PathLike[str]) -> list[str]:
    """Remove the temp files and folders a killed writer left in ``folder`` (not recursive);
    the names removed. Call it only while holding :func:`writing` on ``folder``."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return removed
    for e in entries:
        if is_temp(e.name):
            if e.is_dir(follow_symlinks=False):
                shutil.rmtree(e.path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(e.path)
            removed.append(e.name)
    return removed


@contextlib.contextmanager
def writing(folder: str | os.PathLike[str], what: str = "", wait: float = 0.0) -> Iterator[Path]:
    """Hold the write lock of ``folder`` (made if absent) for the block; yield the folder.

    ``what`` describes the holder for the refusal others get (default: this command line).
    With ``wait`` > 0, wait up to that many seconds for the holder to finish instead of
    refusing at once. On taking the lock, the temp files a killed writer left are removed.
    Raises :class:`FolderInUseError` naming the holder; re-entrant within one process.
    """
    folder = Path(folder).resolve()
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder} exists and is not a folder.")
    made = [p for p in (folder, *folder.parents) if not p.exists()]  # what mkdir will make
    created = bool(made)
    lock_existed = (folder / LOCK_NAME).exists()
    lock = filelock.FileLock(str(folder / LOCK_NAME), timeout=wait, thread_local=False,
                             is_singleton=True)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except filelock.Timeout:
        raise FolderInUseError(
            f"{folder} is in use by {_holder_text(folder)}; wait for it to finish or use "
            f"another folder.") from None
    except OSError as err:  # a read-only or full file system: one sentence
        refused = write_error(folder, err, "folder")
        if refused is None:
            raise
        raise refused from None
    try:
        if lock.lock_counter == 1:
            command = what or " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) or "python"
            holder = {"command": command, "pid": os.getpid(), "host": socket.gethostname(),
                      "since": _dt.datetime.now().astimezone().isoformat(timespec="seconds")}
            try:
                (folder / HOLDER_NAME).write_text(json.dumps(holder))
            except OSError as err:  # a full disk: leave nothing behind, say it in a sentence
                with contextlib.suppress(OSError):
                    (folder / HOLDER_NAME).unlink()
                    if not lock_existed:
                        (folder / LOCK_NAME).unlink()
                refused = write_error(folder, err, "folder")
                if refused is None:
                    raise
                raise refused from None
            remove_stale_temps(folder)
        yield folder
    except BaseException:
        # A folder this call made and the block left empty (it failed before writing) goes.
        if created and lock.lock_counter == 1 and {p.name for p in folder.iterdir()} <= {
                LOCK_NAME, HOLDER_NAME}:
            lock.release()
            shutil.rmtree(folder, ignore_errors=True)
            for parent in made[1:]:  # and the parents it made, unless another writer's now
                try:
                    parent.rmdir()  # only ever an empty folder
                except OSError:
                    break
        raise
    finally:
        if lock.is_locked:
            if lock.lock_counter == 1:
                with contextlib.suppress(OSError):
                    (folder / HOLDER_NAME).unlink()
            lock.release()
