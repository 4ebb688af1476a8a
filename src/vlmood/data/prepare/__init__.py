"""``vlmood data prepare SOURCE --out DIR``: turn offline packages into standard vlmood datasets.

Every source is a function registered in :data:`PREPARERS`; :func:`prepare` runs it into a
temporary folder beside ``out`` and renames that folder into place only when it finished, so a
failure never leaves a half-written dataset. The prepared folder carries ``vlmood_prepared.json``
(format version, source name, package versions, counts, skipped files) and a ``LICENSE.txt``
with the attribution of the data. Re-running on a complete output is a no-op unless
``force=True``; an output written by another format version is an error that says to re-run with
``--force``.

Sources (one module per family):

- ``emoji`` (:mod:`.emoji`): 5 emoji styles from npm packages, splits for the ``emoji-ood``
  benchmark, ``emoji.csv`` and ``pairs.csv``.
- ``openclipart``, ``tuxpaint`` (:mod:`.clipart`): captioned drawings / photos from Debian
  packages, ``captions.csv``/``stamps.csv`` and ``pairs.csv``.
- ``fashion-mnist``, ``mnist5k``, ``opencv-digits``, ``sklearn-digits`` (:mod:`.digits`): class
  folders for the ``fashion-vs-digits`` benchmark.
- ``photo-vs-drawing`` (:mod:`.photo_drawing`): list files over prepared ``tuxpaint``,
  ``openclipart`` and ``emoji`` folders.
- ``foolbox`` (:mod:`.digits`): the ImageNet/CIFAR/MNIST samples of the foolbox wheel.

Options common to most sources: ``install=True`` runs the missing apt/npm/pip command itself;
``from_dir`` reads an existing install (npm prefix, extracted package root).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vlmood.data.base import DataError
from vlmood.registry import Registry

log = logging.getLogger("vlmood.data.prepare")

FORMAT = "vlmood.prepared"
FORMAT_VERSION = 1
MARKER = "vlmood_prepared.json"

#: name -> ``builder(out: Path, **options) -> dict`` (the builder writes into ``out``, a fresh
#: temporary folder, and returns ``{"counts": ..., "packages": ..., ...}`` for the marker).
PREPARERS: Registry[dict[str, Any]] = Registry("data source")


def read_marker(out: str | os.PathLike) -> dict[str, Any] | None:
    """The parsed ``vlmood_prepared.json`` of a prepared folder, or None when there is none."""
    p = Path(out) / MARKER
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"{p} is unreadable ({e}); re-run `vlmood data prepare ... --force`") from e


def is_prepared(out: str | os.PathLike, name: str | None = None) -> bool:
    """True when ``out`` is a complete prepared folder of the current format (and source)."""
    try:
        m = read_marker(out)
    except DataError:
        return False
    return bool(
        m
        and m.get("format") == FORMAT
        and m.get("format_version") == FORMAT_VERSION
        and (name is None or m.get("source") == name)
    )


def _check_existing(name: str, out: Path, marker: dict[str, Any] | None) -> None:
    if marker is None:
        return
    version = marker.get("format_version")
    if marker.get("format") != FORMAT or version != FORMAT_VERSION:
        raise DataError(
            f"{out} was prepared with format version {version!r} (this vlmood writes "
            f"{FORMAT_VERSION}); re-run `vlmood data prepare {name} --out {out} --force` to rebuild it"
        )
    if marker.get("source") != name:
        raise DataError(
            f"{out} holds the prepared source {marker.get('source')!r}, not {name!r}; choose another "
            f"--out or pass --force to replace it"
        )


# options that say where inputs come from or how fast to work, not what the output holds
_NON_CONTENT_OPTIONS = {"install", "from_dir", "wheel", "workers"}


def _content_options(options: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in sorted(options.items()) if k not in _NON_CONTENT_OPTIONS}


def _check_options(name: str, out: Path, marker: dict[str, Any], options: dict[str, Any]) -> None:
    """An existing output made with other content options (seed, size, ...) is not reused silently."""
    before = _content_options(marker.get("options", {}))
    now = _content_options(options)
    changed = {k for k in set(before) | set(now) if k in now and before.get(k) != now.get(k)}
    if changed:
        raise DataError(
            f"{out} was prepared with other options ({', '.join(f'{k}={before.get(k)!r}' for k in sorted(changed))}; "
            f"asked for {', '.join(f'{k}={now[k]!r}' for k in sorted(changed))}): pass --force to rebuild it"
        )


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in ("vlmood", "pillow", "numpy", "cairosvg"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    return out


def prepare(name: str, out: str | os.PathLike, force: bool = False, **options: Any) -> Path:
    """Prepare source ``name`` into ``out`` atomically; return ``out``.

    A complete output of the same source and format is left alone (a no-op) unless ``force``.
    An existing folder that is not a prepared vlmood dataset is never deleted: DataError.
    """
    builder: Callable[..., dict[str, Any]] = PREPARERS.get(name)
    key = getattr(builder, "registered_name", name.lower())
    out = Path(out).absolute()
    marker = read_marker(out) if out.is_dir() else None
    if out.exists():
        if marker is None:
            if out.is_dir() and not any(out.iterdir()):
                out.rmdir()
            else:
                raise DataError(
                    f"{out} exists but is not a prepared vlmood dataset (no {MARKER}); remove it or "
                    f"choose another --out"
                )
        elif not force:
            _check_existing(key, out, marker)
            _check_options(key, out, marker, options)
            log.info("%s: %s is already prepared (use force=True / --force to rebuild)", key, out)
            return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; the renamed folder gets normal permissions
    t0 = time.perf_counter()
    try:
        info = builder(tmp, **options) or {}
        record = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "source": key,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(time.perf_counter() - t0, 2),
            "options": {k: str(v) for k, v in sorted(options.items())},
            "versions": _versions(),
            **info,
        }
        (tmp / MARKER).write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
        if out.exists():  # force: swap the old folder out, then drop it
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / "data")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("%s: prepared %s in %.1fs", key, out, time.perf_counter() - t0)
    return out


def list_sources(pattern: str = "*") -> list[str]:
    """Names of the registered data sources."""
    return PREPARERS.list(pattern)


def describe_source(name: str) -> str:
    """First line of a source builder's docstring."""
    doc = (PREPARERS.get(name).__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""


# register the builders (import for side effects)
from vlmood.data.prepare import clipart, digits, emoji, photo_drawing  # noqa: E402,F401

__all__ = [
    "FORMAT_VERSION",
    "MARKER",
    "PREPARERS",
    "describe_source",
    "is_prepared",
    "list_sources",
    "prepare",
    "read_marker",
]
