"""Run by tests/test_distributed.py under torchrun: `vlmood eval` on 2 ranks."""

import sys

from vlmood.cli import main

if __name__ == "__main__":
    bench, out = sys.argv[1:3]
    sys.exit(
        main(
            [
                "eval",
                "--model",
                "tiny-test",
                "--benchmark",
                bench,
                "--scores",
                "mcm,knn",
                "--workers",
                "0",
                "--no-progress",
                "--out",
                out,
            ]
        )
    )
