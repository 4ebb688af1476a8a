"""Emoji in five artistic styles, from npm packages, with the splits of the ``emoji-ood`` benchmark.

Packages (``npm install --no-save --prefix ~/.cache/vlmood/npm emoji-datasource-google
emoji-datasource-twitter openmoji @lobehub/fluent-emoji-3d``, or ``from_dir=`` an existing npm
prefix / node_modules folder):

==============  ==========================================  ============  ====================
style           file                                        licence       rendering
==============  ==========================================  ============  ====================
google          emoji-datasource-google/img/google/64/*.png Apache-2.0    64 px PNG -> size
twitter         emoji-datasource-twitter/img/twitter/64/    CC-BY-4.0     64 px PNG -> size
openmoji-color  openmoji/color/svg/<HEX>.svg                CC-BY-SA-4.0  cairosvg at size
openmoji-black  openmoji/black/svg/<HEX>.svg (line art)     CC-BY-SA-4.0  cairosvg at size
fluent-3d       @lobehub/fluent-emoji-3d/assets/<hex>.webp  MIT           256 px webp -> size
==============  ==========================================  ============  ====================

Only base emoji (no skin-tone variants, no ``Component`` category) whose image exists in every
style are kept (about 1,850 with emoji-datasource 16 / openmoji 17); code points are matched with
``FE0F`` removed. An emoji whose file is corrupt in any style is skipped in all styles (warning,
recorded in ``vlmood_prepared.json``). Apple and Facebook sets are never used (not licensed).

Output (``size`` = 72 by default, RGB on white)::

    DIR/<style>/<category-slug>/<codepoint>.png
    DIR/emoji.csv        path,style,codepoint,name,category,subcategory,tags,caption
    DIR/pairs.csv        path,caption (every image; caption = the lower-cased emoji name)
    DIR/splits/          image lists (``relative/path label``, relative to DIR) + class names
    DIR/LICENSE.txt

Splits (``emoji-ood``): the ID categories are Animals & Nature + Food & Drink; each emoji is one
class named by its lower-cased name ("dog face"). A seeded 10% of those classes (chosen from the
code points in sorted order with ``numpy.random.default_rng(seed)``) are held out:

- ``id_classes.txt`` / ``heldout_classes.txt``: class names in label order; ``classes.csv``:
  label, split, codepoint, name, category;
- ``<style>_id.txt`` and ``<style>_heldout.txt`` for every style (labels in the ID resp.
  held-out label space);
- ``google_<category-slug>.txt`` for every category (label -1): near-/far-OOD sets;
- ``train_id.txt``: the pretraining styles' (twitter, openmoji-color) ID-class images with ID
  labels (for KNN/Mahalanobis/few-shot);
- ``pretrain_exclude.txt``: every image an ``emoji-ood`` evaluation set uses (google, fluent-3d
  and openmoji-black in all categories, plus every style's images of the held-out classes);
  ``pretrain_pairs.csv`` = ``pairs.csv`` minus those: twitter + openmoji-color without the
  held-out classes.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vlmood.data.base import DataError
from vlmood.data.prepare import PREPARERS
from vlmood.data.prepare._common import (
    Skips,
    load_raster,
    log,
    npm_version,
    render_svg,
    require_cairosvg,
    require_npm,
    save_png,
    slug,
    to_rgb_on_white,
    write_csv,
    write_lines,
    write_pairs,
)

NPM_PACKAGES = ("emoji-datasource-google", "emoji-datasource-twitter", "openmoji", "@lobehub/fluent-emoji-3d")
STYLES = ("google", "twitter", "openmoji-color", "openmoji-black", "fluent-3d")
EVAL_STYLES = ("google", "fluent-3d", "openmoji-black")
PRETRAIN_STYLES = ("twitter", "openmoji-color")
ID_CATEGORIES = ("Animals & Nature", "Food & Drink")
NEAR_CATEGORIES = ("Objects", "Travel & Places", "Activities")
FAR_CATEGORIES = ("Flags", "Symbols")
SKIP_CATEGORIES = ("Component",)

LICENSE_TEXT = """\
Emoji images prepared by vlmood from these npm packages (re-rendered to {size}x{size} px RGB on
white). Each style keeps its own licence; attribute the artists when you share images or results.

google          Noto Emoji by Google, via the npm package emoji-datasource-google {v_google}
                (iamcal/emoji-data). Licence: Apache License 2.0.
                https://github.com/googlefonts/noto-emoji
twitter         Twemoji, Copyright 2019 Twitter, Inc and other contributors (graphics now
                maintained by jdecked/twemoji), via emoji-datasource-twitter {v_twitter}.
                Licence: CC-BY 4.0 https://creativecommons.org/licenses/by/4.0/
openmoji-color  OpenMoji, the open-source emoji and icon project (https://openmoji.org/),
openmoji-black  npm package openmoji {v_openmoji}. Licence: CC BY-SA 4.0
                https://creativecommons.org/licenses/by-sa/4.0/ ; derived images (these
                renderings) are shared under the same licence.
fluent-3d       Fluent Emoji (3D) by Microsoft, via @lobehub/fluent-emoji-3d {v_fluent}.
                Licence: MIT, Copyright (c) Microsoft Corporation.
                https://github.com/microsoft/fluentui-emoji

Emoji names, categories and code points: emoji-datasource (MIT, Cal Henderson) and the Unicode
CLDR annotations carried by openmoji's data/openmoji.json (tags).
Apple and Facebook emoji sets are not used (not licensed for this use).
"""


def _norm(hexcode: str) -> str:
    """Code point key for matching across packages: lower case, FE0F removed."""
    return "-".join(p for p in hexcode.strip().lower().split("-") if p and p != "fe0f")


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path} is missing: the npm package looks incomplete; reinstall it") from None
    except (OSError, ValueError) as e:
        raise DataError(f"{path} is not valid JSON ({e}); reinstall the npm package") from e


def _render_one(job: tuple[dict[str, str], str, int]) -> tuple[dict[str, str], str | None, str | None]:
    """Render the 5 styles of one emoji into ``out``; all or nothing. Returns (job files, bad
    file, reason)."""
    files, out, size = job
    images: dict[str, Image.Image] = {}
    for style in STYLES:
        src = files[style]
        try:
            if src.endswith(".svg"):
                im = render_svg(src, size)
            else:
                im = load_raster(src)
            im = to_rgb_on_white(im)
            if im.size != (size, size):
                im = im.resize((size, size), Image.LANCZOS)
        except ValueError as e:
            return files, src, str(e)
        images[style] = im
    for style, im in images.items():
        save_png(im, Path(out) / files[f"out_{style}"])
    return files, None, None


@PREPARERS.register("emoji")
def prepare_emoji(
    out: Path,
    from_dir: str | os.PathLike | None = None,
    install: bool = False,
    size: int = 72,
    seed: int = 0,
    heldout_fraction: float = 0.1,
    workers: int | None = None,
    limit: int | None = None,
) -> dict[str, Any]:
    """Emoji in 5 styles (google, twitter, openmoji-color, openmoji-black, fluent-3d) + emoji-ood splits."""
    size, seed, heldout_fraction = int(size), int(seed), float(heldout_fraction)
    pk = require_npm(NPM_PACKAGES, from_dir, install=bool(install))
    require_cairosvg()
    g, t, om, fl = (pk[p] for p in NPM_PACKAGES)
    meta = _load_json(g / "emoji.json")
    om_meta = {}
    om_json = om / "data" / "openmoji.json"
    if om_json.is_file():
        om_meta = {_norm(x["hexcode"]): x for x in _load_json(om_json) if x.get("hexcode")}
    else:
        log.warning("emoji: %s is missing; emoji will have no tags", om_json)

    def listing(folder: Path, suffix: str) -> dict[str, Path]:
        if not folder.is_dir():
            raise DataError(f"{folder} is missing: the npm package looks incomplete; reinstall it")
        return {_norm(f[: -len(suffix)]): folder / f for f in os.listdir(folder) if f.endswith(suffix)}

    om_color = listing(om / "color" / "svg", ".svg")
    om_black = listing(om / "black" / "svg", ".svg")
    fluent = listing(fl / "assets", ".webp")
    g_dir, t_dir = g / "img" / "google" / "64", t / "img" / "twitter" / "64"

    entries: list[dict[str, Any]] = []
    seen: set[str] = set()
    n_missing = 0
    for e in sorted(meta, key=lambda e: e.get("sort_order", 0)):
        cat = e.get("category") or ""
        if cat in SKIP_CATEGORIES or not e.get("unified") or not e.get("image"):
            continue
        key = _norm(e["unified"])
        if key in seen:
            continue
        files = {
            "google": g_dir / e["image"],
            "twitter": t_dir / e["image"],
            "openmoji-color": om_color.get(key),
            "openmoji-black": om_black.get(key),
            "fluent-3d": fluent.get(key),
        }
        if not all(p is not None and p.is_file() for p in files.values()):
            n_missing += 1
            continue
        o = om_meta.get(key, {})
        name = (e.get("name") or o.get("annotation") or e.get("short_name") or "").strip().lower()
        if not name:
            n_missing += 1
            continue
        seen.add(key)
        tags: list[str] = []
        for field_ in ("tags", "openmoji_tags"):
            for tag in str(o.get(field_) or "").split(","):
                tag = tag.strip().lower()
                if tag and tag not in tags:
                    tags.append(tag)
        cp = e["unified"].lower()
        entries.append(
            {
                "key": key,
                "codepoint": cp,
                "name": name,
                "category": cat,
                "subcategory": e.get("subcategory") or "",
                "tags": ", ".join(tags),
                "files": {s: str(p) for s, p in files.items()},
                "rel": {s: f"{s}/{slug(cat)}/{cp}.png" for s in STYLES},
            }
        )
    if limit is not None:
        entries = entries[: int(limit)]
    if not entries:
        raise DataError(f"emoji: no emoji found in all styles under {', '.join(str(p) for p in pk.values())}")

    # ---- render (all styles of one emoji or none)
    skips = Skips("emoji")
    jobs = [({**x["files"], **{f"out_{s}": r for s, r in x["rel"].items()}}, str(out), size) for x in entries]
    nworkers = int(workers) if workers is not None else min(4, os.cpu_count() or 1)
    bad: set[str] = set()
    if nworkers > 1 and len(jobs) > 50:
        with ProcessPoolExecutor(nworkers) as ex:
            results = list(ex.map(_render_one, jobs, chunksize=16))
    else:
        results = [_render_one(j) for j in jobs]
    for x, (_files, badfile, reason) in zip(entries, results):
        if badfile is not None:
            skips.add(badfile, f"{reason} (emoji {x['codepoint']} {x['name']!r} skipped in all styles)")
            bad.add(x["key"])
    skips.check_usable(len(entries) - len(bad), "emoji")
    entries = [x for x in entries if x["key"] not in bad]

    # ---- tables
    rows = []
    for s in STYLES:
        for x in entries:
            rows.append(
                [
                    x["rel"][s],
                    s,
                    x["codepoint"],
                    x["name"],
                    x["category"],
                    x["subcategory"],
                    x["tags"],
                    x["name"],
                ]
            )
    write_csv(
        out / "emoji.csv",
        ["path", "style", "codepoint", "name", "category", "subcategory", "tags", "caption"],
        rows,
    )
    write_pairs(out, [(r[0], r[7]) for r in rows])

    # ---- splits
    split_info = _write_splits(out, entries, seed, heldout_fraction)

    versions = {p: npm_version(d) for p, d in pk.items()}
    (out / "LICENSE.txt").write_text(
        LICENSE_TEXT.format(
            size=size,
            v_google=versions["emoji-datasource-google"],
            v_twitter=versions["emoji-datasource-twitter"],
            v_openmoji=versions["openmoji"],
            v_fluent=versions["@lobehub/fluent-emoji-3d"],
        ),
        encoding="utf-8",
    )
    cats: dict[str, int] = {}
    for x in entries:
        cats[x["category"]] = cats.get(x["category"], 0) + 1
    return {
        "packages": {f"npm:{p}": v for p, v in versions.items()},
        "counts": {
            "emoji": len(entries),
            "images": len(rows),
            "styles": {s: len(entries) for s in STYLES},
            "categories": cats,
            "not_in_all_styles": n_missing,
            **split_info,
        },
        "image_size": size,
        **skips.to_dict(),
    }


def _write_splits(out: Path, entries: list[dict[str, Any]], seed: int, fraction: float) -> dict[str, Any]:
    sp = out / "splits"
    sp.mkdir(parents=True, exist_ok=True)
    id_all = [x for x in entries if x["category"] in ID_CATEGORIES]
    keys = sorted(x["key"] for x in id_all)
    n_held = int(round(fraction * len(keys)))
    if id_all and n_held >= len(keys):
        n_held = len(keys) - 1
    rng = np.random.default_rng(seed)
    held_keys = (
        set(rng.choice(np.array(keys, dtype=object), size=n_held, replace=False).tolist())
        if n_held
        else set()
    )
    id_cls = [x for x in id_all if x["key"] not in held_keys]  # emoji sort order
    held_cls = [x for x in id_all if x["key"] in held_keys]
    write_lines(sp / "id_classes.txt", [x["name"] for x in id_cls])
    write_lines(sp / "heldout_classes.txt", [x["name"] for x in held_cls])
    write_csv(
        sp / "classes.csv",
        ["label", "split", "codepoint", "name", "category"],
        [[i, "id", x["codepoint"], x["name"], x["category"]] for i, x in enumerate(id_cls)]
        + [[i, "heldout", x["codepoint"], x["name"], x["category"]] for i, x in enumerate(held_cls)],
    )
    for s in STYLES:
        write_lines(sp / f"{s}_id.txt", [f"{x['rel'][s]} {i}" for i, x in enumerate(id_cls)])
        write_lines(sp / f"{s}_heldout.txt", [f"{x['rel'][s]} {i}" for i, x in enumerate(held_cls)])
    cat_counts = {}
    for cat in sorted({x["category"] for x in entries}):
        lines = [f"{x['rel']['google']} -1" for x in entries if x["category"] == cat]
        cat_counts[slug(cat)] = write_lines(sp / f"google_{slug(cat)}.txt", lines)
    write_lines(
        sp / "train_id.txt",
        [f"{x['rel'][s]} {i}" for s in PRETRAIN_STYLES for i, x in enumerate(id_cls)],
    )
    exclude = []
    for s in STYLES:
        for x in entries:
            if s in EVAL_STYLES or x["key"] in held_keys:
                exclude.append(x["rel"][s])
    write_lines(sp / "pretrain_exclude.txt", sorted(exclude))
    excl = set(exclude)
    pre = [(x["rel"][s], x["name"]) for s in PRETRAIN_STYLES for x in entries if x["rel"][s] not in excl]
    write_csv(sp / "pretrain_pairs.csv", ["path", "caption"], pre)
    return {
        "id_classes": len(id_cls),
        "heldout_classes": len(held_cls),
        "google_by_category": cat_counts,
        "near_ood": sum(cat_counts.get(slug(c), 0) for c in NEAR_CATEGORIES),
        "far_ood": sum(cat_counts.get(slug(c), 0) for c in FAR_CATEGORIES),
        "pretrain_exclude": len(exclude),
        "pretrain_pairs": len(pre),
        "pretrain_styles": list(PRETRAIN_STYLES),
        "heldout_seed": seed,
        "heldout_fraction": fraction,
    }
