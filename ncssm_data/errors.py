"""The one error type of ncssm_data, and the one check of a count argument that every layer uses."""

import errno as _errno
import numbers
import os
import re


class ClipError(ValueError):
    """Bad clip data or a bad observation layout; the message is one sentence naming the file or key."""


class WriteError(OSError):
    """A write the system refused (a full disk, a read-only folder, ...): one sentence naming
    the path; the file that was there, if any, is unchanged and no part of the new one remains."""


def os_errno(err: BaseException) -> int | None:
    """The errno behind ``err``: its own, or the one h5py and orbax spell out in the message."""
    if isinstance(err, OSError) and err.errno:
        return err.errno
    m = re.search(r"errno = (\d+)|\[Errno (\d+)\]", str(err))
    return int(m.group(1) or m.group(2)) if m else None


def write_error(path, err: BaseException, what: str = "file") -> WriteError | None:
    """A :class:`WriteError` for a failed write of ``path``, or None when ``err`` carries no
    errno (a bug, not the system: let it rise as it is)."""
    n = os_errno(err)
    if n is None:
        return None
    if n == _errno.EPIPE:  # a helper process (ffmpeg) died of the real cause: find it
        try:
            fs = os.statvfs(os.path.dirname(os.path.abspath(path)))
            n = _errno.EROFS if fs.f_flag & os.ST_RDONLY else \
                _errno.ENOSPC if fs.f_bavail == 0 else n
        except OSError:
            pass
    why = {_errno.ENOSPC: "the disk is full", _errno.EROFS: "the file system is read-only",
           _errno.EACCES: "permission denied", _errno.EDQUOT: "the disk quota is exceeded",
           _errno.EFBIG: "the file is too large"}.get(n, os.strerror(n).lower())
    e = WriteError(f"Could not write the {what} {path}: {why} (errno {n}); nothing of it was "
                   f"written and what was there is unchanged.")
    e.errno = n
    return e


def check_count(name: str, value) -> int:
    """``value`` as an int if it is an integer >= 1 (not a bool); else a ValueError naming
    ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}.")
    return int(value)


def show(value, limit: int = 200) -> str:
    """``repr(value)`` on one line (numpy prints an array of 2 or more dims on several) and at
    most ``limit`` characters, a numpy scalar as the Python number it holds (``2``, not
    ``np.int64(2)``), for one-sentence messages that quote a value read from a file or passed in."""
    if getattr(value, "shape", None) == () and hasattr(value, "item"):
        value = value.item()
    text = " ".join(line.strip() for line in repr(value).splitlines())
    return text if len(text) <= limit else text[: limit - 3] + "..."
