"""Run by tests/test_distributed.py under torchrun: extract features with the fake model."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import numpy as np  # noqa: E402

from conftest import FakeVLM  # noqa: E402
from vlmood import distributed as D  # noqa: E402
from vlmood.data.sources import load_source  # noqa: E402
from vlmood.features.extract import extract_features  # noqa: E402


def main() -> None:
    data, cache, out = sys.argv[1:4]
    D.init_distributed()
    model = FakeVLM()
    fs = extract_features(
        model,
        load_source(data),
        ("image", "patch"),
        cache_root=cache,
        batch_size=3,
        num_workers=0,
        chunk_size=3,
        progress=False,
    )
    # every rank sees the same arrays; each rank encoded only its share
    np.save(f"{out}/image_rank{D.rank()}.npy", np.asarray(fs.arrays["image"]))
    np.save(f"{out}/patch_rank{D.rank()}.npy", np.asarray(fs.arrays["patch"]))
    Path(f"{out}/seen_rank{D.rank()}.txt").write_text(str(model.images_seen))
    D.barrier()


if __name__ == "__main__":
    main()
