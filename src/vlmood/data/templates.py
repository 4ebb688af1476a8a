"""Prompt template sets: built-in by name, or a file: one template per line, a JSON list of
templates (CLIP_benchmark style), or a JSON dict class name -> list of prompts (CuPL style).

A template holds exactly one placeholder where the class name goes: ``{}`` or ``{c}``
(CLIP_benchmark), normalised to ``{}``. Named fields (``{x}``), indices, format specs
(``{:>300000000}``) and conversions (``{!r}``) are refused, as is a template whose text does not
depend on the class (``a photo of a {{}}.`` renders the literal ``{}`` for every class), and
templates longer than :data:`MAX_TEMPLATE_CHARS`. ``{{``/``}}`` stay literal braces.

Class-specific prompts (CuPL) are kept as lines ``class<TAB>prompt`` in the same list of strings
(so results record them and their hash like templates); :func:`render_prompts` turns class names
plus either form into the prompts of each class. ``load_templates`` returns the list and the
sha256 of the joined text, which results record next to the class-name hash.
"""

from __future__ import annotations

import functools
import json
import os
import string
from collections.abc import Sequence
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


MAX_TEMPLATE_CHARS = 1000
_FIX = "write the class-name placeholder as a plain {} (or {c}), once, e.g. 'a photo of a {}.'"


def check_template(template: str, origin: str = "<template>") -> str:
    """Validate one template and return it normalised (``{c}`` -> ``{}``).

    DataError naming ``origin`` (``file:line``) unless the template has exactly one plain
    ``{}``/``{c}`` placeholder, no other field, format spec or conversion, and at most
    :data:`MAX_TEMPLATE_CHARS` characters.
    """
    if not isinstance(template, str):
        raise DataError(f"{origin}: a template must be a string, got {type(template).__name__}; {_FIX}")
    if len(template) > MAX_TEMPLATE_CHARS:
        raise DataError(
            f"{origin}: template of {len(template)} characters is over the {MAX_TEMPLATE_CHARS} limit; "
            f"shorten it"
        )
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as e:
        raise DataError(f"{origin}: template {template[:80]!r} is malformed ({e}); {_FIX}") from None
    out: list[str] = []
    n = 0
    for literal, fld, spec, conv in parts:
        out.append(literal.replace("{", "{{").replace("}", "}}"))
        if fld is None:
            continue
        if fld not in ("", "c") or spec or conv:
            shown = "{" + fld + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") + "}"
            raise DataError(
                f"{origin}: template {template[:80]!r} has the field {shown[:40]!r}; only a plain {{}} "
                f"placeholder is allowed (no names, indices, format specs or conversions); {_FIX}"
            )
        n += 1
        out.append("{}")
    if n != 1:
        what = "no class-name placeholder" if n == 0 else f"{n} placeholders"
        hint = (
            " ('{{}}' is a literal '{}', the same text for every class)"
            if n == 0 and "{{" in template
            else ""
        )
        raise DataError(f"{origin}: template {template[:80]!r} has {what}{hint}; {_FIX}")
    return "".join(out)


@functools.lru_cache(maxsize=4096)
def _checked(template: str) -> str:
    return check_template(template)


def render(template: str, classname: str) -> str:
    """The prompt of one class: the one safe way to fill a template (validated once, cached)."""
    return _checked(template).format(classname)


def is_class_prompts(templates: Sequence[str]) -> bool:
    """True for class-specific prompts (CuPL): every entry is ``class<TAB>prompt``."""
    return bool(templates) and all("\t" in t for t in templates)


def render_prompts(classnames: Sequence[str], templates: Sequence[str]) -> list[list[str]]:
    """Per class, the prompts to encode: every template filled with the class name, or, for
    class-specific prompts (``class<TAB>prompt`` entries, see :func:`is_class_prompts`), the
    prompts given for that class (matched exactly, else ignoring case and ``_``/space).

    DataError names the classes without prompts.
    """
    if not is_class_prompts(templates):
        return [[render(t, c) for t in templates] for c in classnames]
    by_class: dict[str, list[str]] = {}
    for entry in templates:
        cls, _, prompt = entry.partition("\t")
        by_class.setdefault(cls, []).append(prompt)

    def loose(x: str) -> str:
        return " ".join(x.replace("_", " ").split()).casefold()

    by_loose: dict[str, list[str]] = {}
    for cls, prompts in by_class.items():
        by_loose.setdefault(loose(cls), prompts)
    out: list[list[str]] = []
    missing: list[str] = []
    for c in classnames:
        prompts = by_class.get(c) or by_loose.get(loose(c))
        if not prompts:
            missing.append(c)
        out.append(list(prompts or []))
    if missing:
        raise DataError(
            f"class-specific prompts have none for {len(missing)} class(es): "
            f"{', '.join(repr(m) for m in missing[:5])}{' ...' if len(missing) > 5 else ''}; "
            f"add a list of prompts for each class name"
        )
    return out


def parse_templates(text: str, origin: str = "<text>") -> list[str]:
    """Parse templates: one per line (blank lines and ``#`` comments skipped), a JSON list of
    templates, or a JSON dict class name -> list of prompts (CuPL; prompts are literal text).

    A ``.json`` file is always JSON; any other text is JSON only when it parses as a JSON list or
    dict, so a text line such as ``{} in the wild.`` or ``{c} art`` stays a template.
    """
    head = text.lstrip()
    if origin.lower().endswith(".json"):
        return _parse_json_templates(text, origin)
    if head.startswith(("[", "{")):
        try:
            obj = json.loads(head)
        except json.JSONDecodeError:
            obj = None
        if isinstance(obj, list) or (isinstance(obj, dict) and obj):
            return _parse_json_templates(text, origin)
    out: list[str] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        out.append(check_template(line, f"{origin}:{lineno}"))
    if not out:
        raise DataError(f"{origin}: no templates found (one template per line, each with '{{}}')")
    return out


def _parse_json_templates(text: str, origin: str) -> list[str]:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{origin}: invalid JSON template file: {e}") from e
    if isinstance(obj, list):
        if not obj:
            raise DataError(f"{origin}: empty JSON template list")
        return [check_template(t, f"{origin}[{i}]") for i, t in enumerate(obj)]
    if isinstance(obj, dict) and obj:
        out = []
        for cls, prompts in obj.items():
            if isinstance(prompts, str):
                prompts = [prompts]
            if not isinstance(prompts, list) or not prompts:
                raise DataError(f"{origin}: class {cls!r}: expected a non-empty list of prompts")
            for j, pr in enumerate(prompts):
                if not isinstance(pr, str) or not pr.strip() or len(pr) > MAX_TEMPLATE_CHARS:
                    raise DataError(
                        f"{origin}: class {cls!r} prompt {j}: expected a non-empty string of at most "
                        f"{MAX_TEMPLATE_CHARS} characters"
                    )
                if "\t" in cls or "\n" in cls or "\n" in pr:
                    raise DataError(f"{origin}: class {cls!r} prompt {j}: tabs and newlines are not allowed")
                out.append(f"{cls.strip()}\t{' '.join(pr.split())}")
        return out
    raise DataError(
        f"{origin}: a JSON template file must be a list of templates or a dict class name -> list of "
        f"prompts, got {type(obj).__name__}"
    )


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
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise DataError(
                f"{path}: a template file must be UTF-8 text ({e.reason} at byte {e.start})"
            ) from None
        templates = parse_templates(text, origin=str(path))
    return templates, templates_hash(templates)
