"""`vlmood demo` from a cold cache: wall time and peak memory of the default model against vlmood-tiny.

    python benchmarks/bench_demo.py                      # vlmood-small vs vlmood-tiny, 2 threads
    python benchmarks/bench_demo.py --models vlmood-small --threads 4

Each model runs `vlmood demo --no-report` in its own process with an empty cache folder (the demo set
is extracted, every image encoded, the mined NegLabel words encoded), so the time is what a new user
waits after set-up. Prints seconds, the ratio to the first baseline model (vlmood-tiny), peak RSS and
the demo's ID accuracy and MCM / NegLabel far-OOD AUROC. Figures, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# the demo in this process, then its own peak RSS (kB) as the last line of stderr
CHILD = (
    "import resource, sys\n"
    "from vlmood.cli import main\n"
    "rc = main(sys.argv[1:])\n"
    "print('peak_rss_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
    "sys.exit(rc)\n"
)


def run(model: str, threads: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "VLMOOD_CACHE": str(Path(tmp) / "cache"), "OMP_NUM_THREADS": str(threads)}
        out = Path(tmp) / "demo"
        cmd = [sys.executable, "-c", CHILD, "demo", "--model", model, "--out", str(out)]
        cmd += ["--device", "cpu", "--no-report", "--no-progress"]
        t = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t
        if proc.returncode:
            raise SystemExit(f"{model}: demo failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
        peak_kb = int(proc.stderr.strip().splitlines()[-1].split()[-1])
        res = json.loads((out / "results.json").read_text())
    neg = next(v for k, v in res["scores"].items() if k.startswith("neglabel"))
    return {
        "model": model,
        "wall_s": wall,
        "peak_rss_mb": peak_kb / 1024,
        "id_top1": res["id_accuracy"],
        "mcm_far_auroc": res["scores"]["mcm"]["far_mean"]["auroc"],
        "neglabel_far_auroc": neg["far_mean"]["auroc"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["vlmood-tiny", "vlmood-small"])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    rows = [run(m, args.threads) for m in args.models]
    base = rows[0]["wall_s"]
    print(f"vlmood demo, cold cache, {args.threads} threads, CPU")
    print(
        f"{'model':<16}{'wall s':>8}{'x base':>8}{'peak MB':>9}{'ID top-1':>10}{'MCM far':>9}{'NegLabel far':>14}"
    )
    for r in rows:
        print(
            f"{r['model']:<16}{r['wall_s']:>8.1f}{r['wall_s'] / base:>8.2f}{r['peak_rss_mb']:>9.0f}"
            f"{100 * r['id_top1']:>10.1f}{100 * r['mcm_far_auroc']:>9.1f}{100 * r['neglabel_far_auroc']:>14.1f}"
        )


if __name__ == "__main__":
    main()
