"""Small I/O helpers: atomic directory and file writes, JSON, run metadata."""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import glob
import json
import logging
import os
import platform
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mstdiff import __version__
from mstdiff.errors import InputError

logger = logging.getLogger(__name__)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "__dataclass_fields__"):
        import dataclasses

        return dataclasses.asdict(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def dumps_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=False, default=_json_default, allow_nan=True) + "\n"


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically (temp file + rename)."""
    atomic_write_text(path, dumps_json(obj))


def read_json(path: str | os.PathLike[str], *, fix: str = "re-run the stage that wrote it") -> Any:
    """A JSON file; a missing, unreadable or corrupt file is an :class:`InputError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", where=str(path), fix=fix)
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except UnicodeDecodeError:
        raise InputError("not a text (UTF-8) file, so not the JSON file expected here", where=str(path),
                         fix=fix) from None
    except json.JSONDecodeError as exc:
        what = "empty file" if exc.doc.strip() == "" else f"not valid JSON (line {exc.lineno}: {exc.msg})"
        raise InputError(f"{what}: truncated or damaged", where=str(path), fix=fix) from None


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _follow_umask(path: Path, *, directory: bool) -> None:
    """``mkstemp``/``mkdtemp`` create 0600/0700 whatever the umask: give the result the mode an
    ordinary ``open``/``mkdir`` would have, so colleagues can read a shared dataset."""
    with contextlib.suppress(OSError):
        os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


_WRITE_ERRORS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
                 errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
                 errno.EPERM: "permission denied"}


def _write_error(exc: OSError, path: Path) -> InputError | OSError:
    what = _WRITE_ERRORS.get(exc.errno or 0)
    if what is None:
        return exc
    return InputError(f"cannot write here: {what}", where=str(path),
                      fix="free some space or choose another --out on a writable disk")


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write a file so that readers see either the old or the complete new content."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise _write_error(exc, path) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        _follow_umask(Path(tmp), directory=False)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise _write_error(exc, path) from None
        raise


MIN_FREE_BYTES = 16 * 2**20  # refuse to start work on a disk with less free space than this


def check_output_dir(path: str | os.PathLike[str], *, overwrite: bool = False, reuse: bool = False) -> Path:
    """Check, before any work, that ``path`` can become an output directory: not an existing file,
    not an existing directory (unless ``overwrite`` or ``reuse``), on a writable disk with space."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError("the output path exists and is a file, not a directory", where=str(path),
                         fix="choose a directory path for --out")
    if path.is_dir() and not (overwrite or reuse):
        raise InputError("output directory already exists", where=str(path),
                         fix="choose a new --out directory or pass --overwrite")
    anchor = path
    while not anchor.exists():
        anchor = anchor.parent
    if not anchor.is_dir():
        raise InputError(f"{anchor} is a file, so {path} cannot be created", where=str(path),
                         fix="choose another --out")
    if not os.access(anchor, os.W_OK | os.X_OK) or not _can_create_in(anchor):
        raise InputError(f"cannot write to {anchor} (read-only or no permission)", where=str(path),
                         fix="choose another --out on a writable disk")
    free = shutil.disk_usage(anchor).free
    if free < MIN_FREE_BYTES:
        raise InputError(f"the disk holding {anchor} is full ({free / 2**20:.1f} MiB free)", where=str(path),
                         fix="free some space or choose another --out")
    return path


def _can_create_in(directory: Path) -> bool:
    """Whether a file can really be created in ``directory`` (``os.access`` says yes to root on
    read-only pseudo file systems)."""
    try:
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".mstdiff-write-probe.")
    except OSError:
        return False
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)
    return True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_partials(path: str | os.PathLike[str]) -> list[Path]:
    """Remove ``.NAME.PID.*.partial`` (and ``.NAME.old-PID``) siblings of ``path`` left by a process
    that no longer runs (a stage killed with ``kill -9``); return what was removed."""
    path = Path(path)
    removed: list[Path] = []
    if not path.parent.is_dir():
        return removed
    for p in path.parent.glob(f".{glob.escape(path.name)}.*"):
        m = re.fullmatch(rf"\.{re.escape(path.name)}\.(?:old-)?(\d+)(?:\..*\.partial)?", p.name)
        legacy = re.fullmatch(rf"\.{re.escape(path.name)}\.[^.]+\.partial", p.name)
        if not p.is_dir() or not (m or legacy):
            continue
        if m and _pid_alive(int(m.group(1))):
            continue
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling directory that is renamed to ``path`` on success.

    An exception (or Ctrl-C) inside the block removes the temporary directory, so an interrupted
    stage never leaves a half-written output behind; one killed outright (``kill -9``) leaves a
    ``.NAME.PID.*.partial`` directory that the next run of the stage removes. If ``path`` exists it
    is replaced only when ``overwrite`` is true; otherwise :class:`InputError` is raised before any
    work is done, as for an output path that is a file or on a read-only or full disk.
    """
    path = Path(path)
    check_output_dir(path, overwrite=overwrite)
    for p in remove_stale_partials(path):
        logger.info("removed %s, left by an interrupted run", p)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.",
                                    suffix=".partial"))
    except OSError as exc:
        raise _write_error(exc, path) from None
    _follow_umask(tmp, directory=True)
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise _write_error(exc, path) from None
        raise


@contextlib.contextmanager
def log_to_file(path: str | os.PathLike[str]) -> Iterator[None]:
    """Copy what the package logs (INFO and above) into ``path`` (appended) inside the block."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    pkg, root = logging.getLogger("mstdiff"), logging.getLogger()
    old_level = pkg.level
    quietened: list[logging.Handler] = []
    if pkg.getEffectiveLevel() > logging.INFO:
        # the file gets INFO even when the terminal shows warnings only: the root's own handlers
        # keep the root's threshold for the block
        pkg.setLevel(logging.INFO)
        quietened = [h for h in root.handlers if h.level == logging.NOTSET]
        for h in quietened:
            h.setLevel(root.level)
    pkg.addHandler(handler)
    try:
        yield
    finally:
        pkg.removeHandler(handler)
        pkg.setLevel(old_level)
        for h in quietened:
            h.setLevel(logging.NOTSET)
        handler.close()
    _follow_umask(path, directory=False)


def command_line() -> str:
    """The command that started this process, for provenance in ``meta.json``."""
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else ""


def run_meta(**extra: Any) -> dict[str, Any]:
    """Provenance common to every ``meta.json``: version, command, time, platform."""
    meta: dict[str, Any] = {
        "mstdiff_version": __version__,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command_line(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    meta.update(extra)
    return meta
