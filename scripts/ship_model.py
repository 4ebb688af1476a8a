"""Copy a locked-tower run (`vlmood pretrain --image-tower`) into the package as a shipped model.

    python scripts/ship_model.py --run ~/vlmood-runs/small-lite0-224 --name vlmood-small

Writes ``src/vlmood/resources/models/NAME/``: ``model.safetensors`` and ``open_clip_config.json``
(only what the packages do not hold), ``summary.json`` (machine paths removed), ``validation.json``,
``history.jsonl``, ``pretrain_pairs.csv.gz`` (paths relative to the data root),
``emoji-ood-results.json`` (from ``RUN/emoji-ood``) and ``MODEL_CARD.md`` (scripts/write_model_card.py).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--run", required=True, type=Path, help="the run folder (summary.json, model/, emoji-ood/)"
    )
    ap.add_argument("--name", default="vlmood-small", help="registered model name (resources/models/NAME)")
    ap.add_argument(
        "--cold-run",
        type=Path,
        help="an earlier run of the same data and views whose features were computed from a cold "
        "cache (when RUN reused them): its extraction time goes into the card",
    )
    args = ap.parse_args()
    run, dest = args.run.expanduser(), HERE / "src" / "vlmood" / "resources" / "models" / args.name
    summary = json.loads((run / "summary.json").read_text())
    results = run / "emoji-ood" / "results.json"
    if not results.is_file():
        sys.exit(
            f"{results} is missing: evaluate the model on emoji-ood first (scripts/train_vlmood_small.sh)"
        )
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run / "model" / "model.safetensors", dest / "model.safetensors")
    cfg = json.loads((run / "model" / "open_clip_config.json").read_text())
    cfg["arch"] = args.name
    (dest / "open_clip_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    data_dirs = [Path(d) for d in summary["config"]["data"]]
    root = Path(os.path.commonpath([str(d.parent) for d in data_dirs]))

    def rel(p: str) -> str:
        return os.path.relpath(p, root) if Path(p).is_absolute() else p

    if args.cold_run:
        cold = json.loads((args.cold_run.expanduser() / "summary.json").read_text())
        summary["cold_extract_time_s"] = cold["extract_time_s"]
    summary.pop("model_dir", None)
    summary.pop("environment", None)
    summary["config"]["data"] = [rel(str(d)) for d in data_dirs]
    summary["config"]["exclude"] = [rel(p) for p in summary["config"].get("exclude", [])]
    summary["config"]["out"] = "RUN"
    (dest / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    for name in ("validation.json", "history.jsonl"):
        shutil.copyfile(run / name, dest / name)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["path", "caption", "source"])
    with open(run / "pairs_used.csv", newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            w.writerow([rel(row["path"]), row["caption"], row["source"]])
    with gzip.GzipFile(dest / "pretrain_pairs.csv.gz", "wb", mtime=0) as gz:
        gz.write(buf.getvalue().encode())
    shutil.copyfile(results, dest / "emoji-ood-results.json")
    subprocess.run(
        [
            sys.executable,
            str(HERE / "scripts" / "write_model_card.py"),
            "--run",
            str(dest),
            "--results",
            str(dest / "emoji-ood-results.json"),
            "--out",
            str(dest / "MODEL_CARD.md"),
        ],
        check=True,
    )
    print(f"shipped {run} as {args.name}: {dest}")


if __name__ == "__main__":
    main()
