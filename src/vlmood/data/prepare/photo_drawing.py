"""``photo-vs-drawing``: list files over already prepared ``tuxpaint``, ``openclipart`` and
``emoji`` folders (no images are copied).

Layout: the data root holds each prepared source under its own name (``ROOT/tuxpaint``,
``ROOT/openclipart``, ``ROOT/emoji``) and this source is prepared into ``ROOT/photo-vs-drawing``
(``root=`` overrides where the others are; default: the output's parent folder). Paths in the
lists are relative to ROOT.

Matching rule (documented, simple, deliberately strict): each candidate concept has a few
words (``cat``: cat, cats, kitten, kitty...). A Tux Paint stamp's text is its caption plus its
file name; an OpenClipart drawing's text is its title plus keywords. Text is lower-cased and
split into words; an image matches a concept when one of its words is a concept word. Images
matching two or more concepts (``"a tree frog"``) are dropped as ambiguous. A concept is kept
when it has at least ``min_photos`` Tux Paint photos and ``min_drawings`` drawings (Tux Paint
cartoons/drawings + OpenClipart) together.

Sets:

- ``id.txt`` (+ ``classnames.txt``): Tux Paint photos of the kept concepts;
- ``shift_tuxpaint_cartoons.txt``: Tux Paint cartoons and vector drawings of the kept concepts
  (ID labels);
- ``shift_openclipart.txt``: OpenClipart drawings of the kept concepts (ID labels);
- ``near_tuxpaint_photos.txt``: Tux Paint photos matching no candidate concept (same domain,
  other classes);
- ``far_openclipart_other.txt``: OpenClipart drawings matching no candidate concept (other
  classes *and* another domain: a drawing detector would score well here, so read it together
  with the domain-shift sets);
- ``far_emoji_symbols.txt``: Google-style emoji of the Symbols category.

Keyword matching leaks: a drawing titled "Tom" that shows a cat counts as "other". Treat the OOD
sets as mostly, not strictly, free of ID concepts.
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path
from typing import Any

from vlmood.data.base import DataError
from vlmood.data.prepare import PREPARERS, is_prepared
from vlmood.data.prepare._common import write_lines

CONCEPTS: dict[str, tuple[str, ...]] = {
    "cat": ("cat", "cats", "kitten", "kittens", "kitty"),
    "dog": ("dog", "dogs", "puppy", "puppies"),
    "horse": ("horse", "horses", "pony", "foal"),
    "cow": ("cow", "cows", "bull", "calf", "cattle"),
    "pig": ("pig", "pigs", "piglet", "hog"),
    "sheep": ("sheep", "lamb", "ram"),
    "rabbit": ("rabbit", "rabbits", "bunny", "hare"),
    "mouse": ("mouse", "mice", "rat"),
    "bird": ("bird", "birds"),
    "duck": ("duck", "ducks", "duckling"),
    "chicken": ("chicken", "hen", "rooster", "chick"),
    "owl": ("owl", "owls"),
    "penguin": ("penguin", "penguins"),
    "fish": ("fish", "fishes"),
    "frog": ("frog", "frogs", "toad"),
    "turtle": ("turtle", "tortoise"),
    "snake": ("snake", "snakes"),
    "butterfly": ("butterfly", "butterflies"),
    "bee": ("bee", "bees", "bumblebee"),
    "spider": ("spider", "spiders"),
    "elephant": ("elephant", "elephants"),
    "lion": ("lion", "lions", "lioness"),
    "bear": ("bear", "bears"),
    "apple": ("apple", "apples"),
    "banana": ("banana", "bananas"),
    "orange": ("orange", "oranges"),
    "strawberry": ("strawberry", "strawberries"),
    "grapes": ("grape", "grapes"),
    "pear": ("pear", "pears"),
    "carrot": ("carrot", "carrots"),
    "bread": ("bread", "loaf"),
    "cake": ("cake", "cakes", "cupcake"),
    "car": ("car", "cars", "automobile"),
    "bus": ("bus", "buses"),
    "truck": ("truck", "trucks", "lorry"),
    "bicycle": ("bicycle", "bike", "bicycles"),
    "airplane": ("airplane", "aeroplane", "plane", "aircraft", "jet"),
    "boat": ("boat", "ship", "sailboat", "boats"),
    "train": ("train", "locomotive"),
    "tree": ("tree", "trees"),
    "flower": ("flower", "flowers", "rose", "tulip", "daisy", "sunflower"),
    "house": ("house", "houses", "cottage"),
    "chair": ("chair", "chairs"),
    "guitar": ("guitar", "guitars"),
    "ball": ("ball", "football", "soccer", "basketball"),
}
_WORD = re.compile(r"[a-z]+")


def concept_of(text: str, concepts: dict[str, tuple[str, ...]] = CONCEPTS) -> tuple[str | None, int]:
    """(the concept, number of concepts matched) for a caption text."""
    words = set(_WORD.findall(text.lower().replace("_", " ").replace("-", " ")))
    hits = [c for c, terms in concepts.items() if words.intersection(terms)]
    return (hits[0] if len(hits) == 1 else None), len(hits)


def _rows(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, encoding="utf-8", newline="") as f:
            return list(csv.DictReader(f))
    except OSError as e:
        raise DataError(f"cannot read {path}: {e}") from e


def _need(root: Path, name: str) -> Path:
    d = root / name
    if not is_prepared(d, name):
        raise DataError(
            f"photo-vs-drawing needs the prepared source {name!r} at {d}: run "
            f"`vlmood data prepare {name} --out {d}` first"
        )
    return d


@PREPARERS.register("photo-vs-drawing")
def prepare_photo_drawing(
    out: Path,
    root: str | os.PathLike | None = None,
    min_photos: int = 3,
    min_drawings: int = 3,
    final_name: str | None = None,
) -> dict[str, Any]:
    """List files: Tux Paint photos (ID) vs cartoons/OpenClipart drawings of the same concepts."""
    # ``out`` is a temporary sibling of the final folder, so its parent is the data root
    rootp = Path(root) if root is not None else out.parent
    tp = _need(rootp, "tuxpaint")
    oc = _need(rootp, "openclipart")
    em = rootp / "emoji"
    tp_rows = _rows(tp / "stamps.csv")
    oc_rows = _rows(oc / "captions.csv")

    photos: dict[str, list[str]] = {}
    drawings: dict[str, list[str]] = {}
    oc_draw: dict[str, list[str]] = {}
    near, far_oc = [], []
    for r in tp_rows:
        c, n = concept_of(f"{r['caption']} {r.get('name', '')}")
        p = f"tuxpaint/{r['path']}"
        if r["kind"] == "photo":
            if c is not None:
                photos.setdefault(c, []).append(p)
            elif n == 0:
                near.append(p)
        elif c is not None:
            drawings.setdefault(c, []).append(p)
    for r in oc_rows:
        c, n = concept_of(f"{r['title']} {r['keywords'].replace(';', ' ')}")
        p = f"openclipart/{r['path']}"
        if c is not None:
            oc_draw.setdefault(c, []).append(p)
        elif n == 0:
            far_oc.append(p)
    kept = [
        c
        for c in CONCEPTS
        if len(photos.get(c, [])) >= int(min_photos)
        and len(drawings.get(c, [])) + len(oc_draw.get(c, [])) >= int(min_drawings)
    ]
    if len(kept) < 2:
        raise DataError(
            f"photo-vs-drawing: only {len(kept)} concepts have >= {min_photos} Tux Paint photos and "
            f">= {min_drawings} drawings under {rootp}; lower min_photos/min_drawings"
        )
    label = {c: i for i, c in enumerate(kept)}
    write_lines(out / "classnames.txt", kept)
    counts = {
        "id": write_lines(out / "id.txt", [f"{p} {label[c]}" for c in kept for p in photos[c]]),
        "shift_tuxpaint_cartoons": write_lines(
            out / "shift_tuxpaint_cartoons.txt",
            [f"{p} {label[c]}" for c in kept for p in drawings.get(c, [])],
        ),
        "shift_openclipart": write_lines(
            out / "shift_openclipart.txt", [f"{p} {label[c]}" for c in kept for p in oc_draw.get(c, [])]
        ),
        "near_tuxpaint_photos": write_lines(out / "near_tuxpaint_photos.txt", [f"{p} -1" for p in near]),
        "far_openclipart_other": write_lines(out / "far_openclipart_other.txt", [f"{p} -1" for p in far_oc]),
    }
    sym = em / "splits" / "google_symbols.txt"
    if is_prepared(em, "emoji") and sym.is_file():
        lines = [ln.split()[0] for ln in sym.read_text(encoding="utf-8").splitlines() if ln.strip()]
        counts["far_emoji_symbols"] = write_lines(
            out / "far_emoji_symbols.txt", [f"emoji/{p} -1" for p in lines]
        )
    per_class = {
        c: {
            "photos": len(photos[c]),
            "tuxpaint_drawings": len(drawings.get(c, [])),
            "openclipart": len(oc_draw.get(c, [])),
        }
        for c in kept
    }
    (out / "LICENSE.txt").write_text(
        "List files only; the images belong to the prepared sources they point to:\n"
        "tuxpaint/ (Tux Paint stamps, GPL-2+), openclipart/ (public domain), emoji/ (see emoji/LICENSE.txt).\n",
        encoding="utf-8",
    )
    return {"counts": {"classes": len(kept), **counts, "per_class": per_class}, "concepts": kept}
