"""Small shared helpers: atomic writes (temp files named with their writer), hashing, canonical JSON."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def check_folder_path(path: str | os.PathLike, what: str = "--out") -> Path:
    """``path`` as an output folder: refuses (UsageError, before any work) an existing file or a
    path under a file; a folder that exists or does not exist yet is fine."""
    from vlmood.errors import UsageError

    out = Path(path)
    if out.exists() and not out.is_dir():
        raise UsageError(
            f"{what} {out} is an existing file, not a folder; give a folder path (it is created)"
        )
    for parent in out.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"{what} {out}: {parent} is a file, not a folder; choose another {what}")
            break
    return out


def check_own_folder(path: str | os.PathLike, is_ours: bool, kind: str, what: str = "--out") -> Path:
    """:func:`check_folder_path`, and refuse (UsageError) a folder holding visible files when
    ``is_ours`` is False (it has no marker of an earlier ``kind`` run): a run writes and removes
    files there."""
    from vlmood.errors import UsageError

    out = check_folder_path(path, what)
    if is_ours or not out.is_dir():
        return out
    other = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    if other:
        shown = ", ".join(other[:3]) + (f" and {len(other) - 3} more" if len(other) > 3 else "")
        raise UsageError(
            f"{what} {out} holds files that are not {kind}'s ({shown}); choose a new or empty folder"
        )
    return out


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: stable input for hashing."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sha256_json(obj: Any) -> str:
    return sha256_text(canonical_json(obj))


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def blake2b_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """blake2b (32-byte digest) of a file's bytes: the cache's integrity check (~1 GB/s)."""
    h = hashlib.blake2b(digest_size=32)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:40] or "host"


def temp_prefix(name: str) -> str:
    """``.NAME.PID@HOST.``: the prefix of every temporary file or folder vlmood writes beside NAME,
    so :func:`sweep_stale_temps` can tell the writer (a killed writer leaves its temp behind)."""
    return f".{name}.{os.getpid()}@{_host()}."


_TEMP_RE = re.compile(r"^\..+\.(\d+)@([A-Za-z0-9_-]+)\.[^.]+\.tmp$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return True
    return True


def sweep_stale_temps(
    directory: str | os.PathLike, max_age_s: float = 24 * 3600, name: str | None = None
) -> list[Path]:
    """Remove the temporary files and folders (``.*.tmp``; with ``name``, only the temporaries of
    that file or folder, ``.NAME.*.tmp``) a killed writer left in ``directory``.

    A temp named by :func:`temp_prefix` whose writer process (on this host) is gone is stale at
    once; any other temp (another host, an old unnamed one, a live pid that may be a reused one)
    only when it is older than ``max_age_s``. Returns what was removed.
    """
    d = Path(directory)
    removed: list[Path] = []
    try:
        candidates = list(d.glob(f".{glob_escape(name)}.*.tmp" if name else ".*.tmp"))
    except OSError:
        return removed
    now = time.time()
    host = _host()
    for p in candidates:
        m = _TEMP_RE.match(p.name)
        try:
            age = now - p.lstat().st_mtime
        except OSError:
            continue
        stale = age > max_age_s
        if m and m.group(2) == host and int(m.group(1)) != os.getpid():
            stale = stale or not _pid_alive(int(m.group(1)))
        if not stale:
            continue
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
        except FileNotFoundError:
            pass
        except OSError:
            continue
    return removed


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def replace_dir(staging: str | os.PathLike, final: str | os.PathLike) -> None:
    """Move the completed folder ``staging`` to ``final``: an existing ``final`` is renamed aside
    first, the new one renamed in, then the old one deleted (readers see the old folder or the new
    one, never a mix; a kill between the two renames leaves no ``final`` and the old folder under a
    temp name that :func:`sweep_stale_temps` removes)."""
    staging, final = Path(staging), Path(final)
    for _ in range(20):
        aside = None
        if final.exists() or final.is_symlink():
            aside = final.parent / f"{temp_prefix(final.name)}old{os.urandom(4).hex()}.tmp"
            try:
                os.rename(final, aside)
            except FileNotFoundError:
                continue  # another process moved it meanwhile
        try:
            os.rename(staging, final)
        except OSError as e:
            if aside is not None:
                with contextlib.suppress(OSError):
                    os.rename(aside, final)
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                continue  # another process put its own folder in place meanwhile: go again
            raise
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
        return
    raise OSError(errno.EBUSY, f"could not move {staging} to {final}: other processes keep replacing it")


def is_disk_full(e: BaseException) -> bool:
    """An OSError meaning the file system (or the user's quota) is full."""
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The temp file is ``.NAME.PID@HOST.XXXX.tmp`` (:func:`temp_prefix`): a kill -9 leaves it, and
    :func:`sweep_stale_temps` removes it once its writer is gone."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; give the file normal permissions
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def json_safe(obj: Any) -> Any:
    """Replace NaN/inf floats by None (strict JSON), recursively."""
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> None:
    """Write strict JSON atomically (NaN and infinities become null)."""
    text = json.dumps(json_safe(obj), indent=indent, sort_keys=False, default=str, allow_nan=False)
    atomic_write_text(path, text + "\n")
