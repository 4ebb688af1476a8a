"""Build the bundled demo set (src/vlmood/resources/demo/emoji-demo.zip) from prepared emoji data.

Only permissively licensed styles go in: Google (Apache-2.0) for ID and OOD, Fluent 3D (MIT) for
the domain shift, Twitter (CC-BY-4.0) for the KNN bank. OpenMoji (CC-BY-SA) is left out.

    python scripts/build_demo_set.py --data ~/vlmood-data --out src/vlmood/resources/demo/emoji-demo.zip \
        --neglabel-labels runs/tiny-emoji/artifacts/neglabel_<hash>.json --neglabel-keep 2500 500

The NegLabel labels are the ones `vlmood eval --score neglabel` mined from all of WordNet for the
emoji-ood ID classes; the demo keeps the farthest 2,500 nouns and 500 adjectives so that it encodes
3,000 prompts instead of 21,000 (the mined order is farthest first).
"""

from __future__ import annotations

import argparse
import io
import json
import random
import zipfile
from pathlib import Path

DEMO_YAML = """\
# vlmood's bundled demo: a small, permissively licensed subset of the emoji-ood benchmark
# (see vlmood/resources/benchmarks/emoji-ood.yaml and LICENSE.txt). Paths are relative to this file.
name: emoji-demo
description: Google emoji animals & food (ID) vs objects/travel/activities (near) and flags/symbols (far)
templates: simple
id:
  name: google-id
  list: lists/id.txt
  root: .
  classnames: lists/id_classes.txt
train:
  name: twitter-id
  list: lists/train.txt
  root: .
  classnames: lists/id_classes.txt
ood:
  near:
    - name: objects
      list: lists/near_objects.txt
      root: .
    - name: travel-places
      list: lists/near_travel-places.txt
      root: .
    - name: activities
      list: lists/near_activities.txt
      root: .
  far:
    - name: flags
      list: lists/far_flags.txt
      root: .
    - name: symbols
      list: lists/far_symbols.txt
      root: .
domain_shift:
  - name: fluent-3d
    list: lists/shift_fluent-3d.txt
    root: .
    classnames: lists/id_classes.txt
held_out_classes:
  - name: google-heldout
    list: lists/heldout.txt
    root: .
    classnames: lists/heldout_classes.txt
"""

LICENSE = """\
vlmood demo set: images from these emoji sets, unmodified except for compositing on white and
resizing to 72x72 px.

- Google Noto Emoji (via npm emoji-datasource-google): Apache License 2.0,
  https://github.com/googlefonts/noto-emoji (Copyright Google Inc.)
- Twitter Twemoji (via npm emoji-datasource-twitter): CC-BY 4.0,
  https://creativecommons.org/licenses/by/4.0/ (Copyright Twitter, Inc and other contributors),
  graphics from https://github.com/twitter/twemoji
- Microsoft Fluent Emoji 3D (via npm @lobehub/fluent-emoji-3d): MIT License (Copyright Microsoft
  Corporation)
Emoji names, categories and the PNG renderings come through the npm emoji-datasource packages
(MIT License, Copyright Cal Henderson), from Unicode's emoji data (Unicode License).
"""


def reduce_labels(path: Path, n_noun: int, n_adj: int) -> dict:
    """The first n_noun nouns and n_adj adjectives of a NegLabel labels file (mined order)."""
    d = json.loads(path.read_text(encoding="utf-8"))
    keep, counts = [], {"noun": 0, "adj": 0}
    limits = {"noun": n_noun, "adj": n_adj}
    for i, kind in enumerate(d["kinds"]):
        if counts[kind] < limits[kind]:
            keep.append(i)
            counts[kind] += 1
    for key in ("labels", "kinds", "prompts", "distances"):
        if d.get(key) is not None:
            d[key] = [d[key][i] for i in keep]
    d["num_labels"] = len(keep)
    d["params"] = dict(d.get("params", {}), reduced_to=counts, reduced_from=path.name)
    return d


def read_list(path: Path) -> list[tuple[str, int]]:
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            p, lab = line.rsplit(" ", 1)
            out.append((p, int(lab)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, type=Path, help="root holding the prepared emoji/ source")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--near-per-category", type=int, default=80)
    ap.add_argument("--far-per-category", type=int, default=120)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--neglabel-labels", type=Path, help="mined NegLabel labels (JSON) to ship with the demo")
    ap.add_argument(
        "--neglabel-keep",
        type=int,
        nargs=2,
        metavar=("NOUNS", "ADJS"),
        default=(2500, 500),
        help="keep the first (farthest) NOUNS nouns and ADJS adjectives of the mined labels",
    )
    args = ap.parse_args()
    emoji = args.data / "emoji"
    splits = emoji / "splits"
    rng = random.Random(args.seed)

    def sample(items, k):
        items = list(items)
        if len(items) <= k:
            return items
        return sorted(rng.sample(items, k))

    lists = {
        "id": read_list(splits / "google_id.txt"),
        "train": [x for x in read_list(splits / "train_id.txt") if x[0].startswith("twitter/")],
        "near_objects": sample(read_list(splits / "google_objects.txt"), args.near_per_category),
        "near_travel-places": sample(read_list(splits / "google_travel-places.txt"), args.near_per_category),
        "near_activities": sample(read_list(splits / "google_activities.txt"), args.near_per_category),
        "far_flags": sample(read_list(splits / "google_flags.txt"), args.far_per_category),
        "far_symbols": sample(read_list(splits / "google_symbols.txt"), args.far_per_category),
        "shift_fluent-3d": read_list(splits / "fluent-3d_id.txt"),
        "heldout": read_list(splits / "google_heldout.txt"),
    }
    for name, items in lists.items():
        for p, _ in items:
            style = p.split("/", 1)[0]
            if style not in ("google", "twitter", "fluent-3d"):
                raise SystemExit(f"{name}: {p} is not from a permissively licensed style")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    files = sorted({p for items in lists.values() for p, _ in items})
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr("demo.yaml", DEMO_YAML)
        z.writestr("LICENSE.txt", LICENSE)
        z.writestr("lists/id_classes.txt", (splits / "id_classes.txt").read_text(encoding="utf-8"))
        z.writestr("lists/heldout_classes.txt", (splits / "heldout_classes.txt").read_text(encoding="utf-8"))
        for name, items in lists.items():
            buf = io.StringIO()
            for p, lab in items:
                buf.write(f"images/{p} {lab}\n")
            z.writestr(f"lists/{name}.txt", buf.getvalue())
        for p in files:
            z.write(emoji / p, f"images/{p}")
        if args.neglabel_labels:
            z.writestr(
                "neglabel_labels.json",
                json.dumps(reduce_labels(args.neglabel_labels, *args.neglabel_keep), indent=1),
            )
    tmp.replace(args.out)  # (a failed build leaves only the .tmp file, never a partial zip)
    counts = {k: len(v) for k, v in lists.items()}
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB, {len(files)} images): {counts}")


if __name__ == "__main__":
    main()
