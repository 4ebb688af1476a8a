"""Prompt template sets: built-in by name, or a text file with one template per line.

Every template contains ``{}`` where the class name goes. ``load_templates`` returns the list and
the sha256 of the joined text, which results record next to the class-name hash.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from vlmood.data.base import DataError
from vlmood.utils import sha256_text

# Inline built-in sets. ``imagenet80`` lives in resources/templates/imagenet80.txt (80 lines).
_INLINE: dict[str, list[str]] = {
    # a single generic prompt
    "simple": ["a photo of a {}."],
    # MCM (Ming et al. 2022) uses "a photo of a <label>" without a final period
    "mcm": ["a photo of a {}"],
    # CLIP's 7-template ImageNet selection (CoOp ``IMAGENET_TEMPLATES_SELECT``)
    "imagenet7": [
        "itap of a {}.",
        "a bad photo of the {}.",
        "a origami {}.",
        "a photo of the large {}.",
        "a {} in a video game.",
        "art of the {}.",
        "a photo of the small {}.",
    ],
    # PLP (Adaloglou et al. 2024) pseudo-label prompts, methods.md section 6.2
    "plp5": [
        "a photo of a {}.",
        "a blurry photo of a {}.",
        "a photo of many {}.",
        "a photo of the large {}.",
        "a photo of the small {}.",
    ],
    # NegLabel (Jiang et al. 2024) prompt for both ID and negative labels
    "neglabel": ["the nice {}"],
}
_FILE_SETS = ("imagenet80",)


def list_templates() -> list[str]:
    """Names of the built-in template sets."""
    return sorted([*_INLINE, *_FILE_SETS])


def _resource_text(name: str) -> str:
    return resources.files("vlmood").joinpath("resources", "templates", f"{name}.txt").read_text("utf-8")


def parse_templates(text: str, origin: str = "<text>") -> list[str]:
    """Parse one template per line; blank lines and ``#`` comments are skipped."""
    out: list[str] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if "{}" not in line:
            raise DataError(
                f"{origin}:{lineno}: template {line!r} has no '{{}}' placeholder for the class name"
            )
        out.append(line)
    if not out:
        raise DataError(f"{origin}: no templates found (one template per line, each with '{{}}')")
    return out


def templates_hash(templates: list[str]) -> str:
    """sha256 of the templates joined by newlines (the identity recorded with results)."""
    return sha256_text("\n".join(templates))


def load_templates(spec: str | os.PathLike) -> tuple[list[str], str]:
    """Return ``(templates, sha256)`` for a built-in set name or a template file path."""
    key = str(spec)
    if key.lower() in _INLINE:
        templates = list(_INLINE[key.lower()])
    elif key.lower() in _FILE_SETS:
        templates = parse_templates(_resource_text(key.lower()), origin=f"built-in:{key.lower()}")
    else:
        path = Path(key)
        if not path.is_file():
            raise DataError(
                f"unknown template set {key!r}: not a built-in ({', '.join(list_templates())}) "
                f"and no such file"
            )
        templates = parse_templates(path.read_text(encoding="utf-8"), origin=str(path))
    return templates, templates_hash(templates)
