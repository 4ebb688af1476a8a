"""Extraction sharded over 2 CPU processes (gloo, torchrun) equals 1-process extraction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import FakeVLM, torchrun
from vlmood.data.sources import load_source
from vlmood.features.extract import extract_features

pytestmark = pytest.mark.dist


def _torchrun(script: str, *args: str) -> None:
    """Run ``tests/<script>`` on 2 CPU processes (gloo) with torchrun; fail with its output."""
    res = torchrun([str(Path(__file__).parent / script), *args], timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]


def test_two_process_gloo_extraction_equals_single_process(digit_folder, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    _torchrun("dist_extract_worker.py", str(digit_folder), str(tmp_path / "cache2"), str(out))
    single = extract_features(
        FakeVLM(),
        load_source(str(digit_folder)),
        ("image", "patch"),
        cache_root=tmp_path / "cache1",
        batch_size=3,
        num_workers=0,
        chunk_size=3,
        progress=False,
    )
    for r in (0, 1):
        np.testing.assert_array_equal(np.load(out / f"image_rank{r}.npy"), single.arrays["image"])
        np.testing.assert_array_equal(np.load(out / f"patch_rank{r}.npy"), single.arrays["patch"])
    seen = [int((out / f"seen_rank{r}.txt").read_text()) for r in (0, 1)]
    # 15 images in 5 chunks of 3: rank 0 gets chunks 0, 2, 4 (9 images), rank 1 gets 1, 3 (6)
    assert seen == [9, 6]


def test_two_process_ddp_training_keeps_ranks_in_sync(tmp_path):
    import torch

    _torchrun("dist_train_worker.py", str(tmp_path))
    w0 = torch.load(tmp_path / "weights_rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "weights_rank1.pt", weights_only=True)
    torch.manual_seed(0)
    init = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1)).state_dict()
    for k in w0:
        torch.testing.assert_close(w0[k], w1[k], rtol=0, atol=0, msg=k)  # gradients were all-reduced
        assert not torch.equal(w0[k], init[k]), k  # and training happened
    assert (tmp_path / "run" / "last.pt").exists()


def test_two_process_eval_writes_one_result(tmp_path, monkeypatch):
    """Under torchrun every rank encodes its share; rank 0 alone scores and writes (no hang)."""
    import json

    from vlmood.data.example import write_example

    bench = write_example(tmp_path / "ex", per_class=6, size=32)
    # with a domain-shift set: its accuracy is computed after the other ranks have left run_eval
    text = (
        bench.read_text()
        + "domain_shift:\n  - name: shifted\n    folder: train\n    classnames: classnames.txt\n"
    )
    bench.write_text(text)
    monkeypatch.setenv("VLMOOD_CACHE", str(tmp_path / "cache"))
    _torchrun("dist_eval_worker.py", str(bench), str(tmp_path / "run"))
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert set(res["scores"]) == {"mcm", "knn"} and res["datasets"]["id"]["n"] == 30
    assert "shifted" in res["domain_shift"]
