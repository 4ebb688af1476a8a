"""Shared fixtures: small real images (scikit-learn's digits) and a deterministic fake VLM."""

from __future__ import annotations

import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from vlmood.models.base import VLM, ModelIdentity, PreprocessSpec

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def write_digit_images(
    root: Path, digits: list[int], per_class: int, size: int = 32, flat: bool = False
) -> Path:
    """Write real handwritten-digit images (sklearn's bundled digits) as PNG files.

    Folder layout ``root/<name>/<i>.png`` (or flat ``root/<name>_<i>.png``).
    """
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    root.mkdir(parents=True, exist_ok=True)
    for digit in digits:
        idx = np.flatnonzero(d.target == digit)[:per_class]
        for j, i in enumerate(idx):
            arr = (d.images[i] / 16.0 * 255).astype(np.uint8)
            img = Image.fromarray(arr, mode="L").resize((size, size), Image.NEAREST).convert("RGB")
            if flat:
                img.save(root / f"{DIGIT_NAMES[digit]}_{j}.png")
            else:
                (root / DIGIT_NAMES[digit]).mkdir(exist_ok=True)
                img.save(root / DIGIT_NAMES[digit] / f"{j}.png")
    return root


@pytest.fixture
def digit_folder(tmp_path: Path) -> Path:
    return write_digit_images(tmp_path / "digits", [0, 1, 2], per_class=5)


class FakeVLM(VLM):
    """A deterministic stand-in model: a fixed random projection of 8x8 pixels.

    Counts encoded images so tests can check what the cache saved.
    """

    def __init__(self, seed: int = 0, dim: int = 16, fail_after: int | None = None) -> None:
        g = torch.Generator().manual_seed(seed)
        self.w_pre = torch.randn(3 * 8 * 8, 24, generator=g)
        self.w_proj = torch.randn(24, dim, generator=g)
        self.dim = dim
        self.device = torch.device("cpu")
        self.images_seen = 0
        self.fail_after = fail_after
        self.identity = ModelIdentity(
            backend="fake",
            arch="fake",
            weights=f"random:{seed}",
            precision="fp32",
            quick_gelu=False,
            preprocess=PreprocessSpec(8, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "nearest"),
        )
        self._module = torch.nn.Linear(1, 1)

    @property
    def embed_dim(self) -> int:
        return self.dim

    @property
    def logit_scale(self) -> float:
        return 100.0

    @property
    def preprocess(self):
        import torchvision.transforms as T

        return T.Compose([T.Resize((8, 8), interpolation=T.InterpolationMode.NEAREST), T.ToTensor()])

    def tokenize(self, texts):
        return torch.tensor([[len(t)] for t in texts])

    def encode_image_features(self, images, kinds=("image",)):
        if self.fail_after is not None and self.images_seen >= self.fail_after:
            raise KeyboardInterrupt("simulated kill")
        self.images_seen += images.shape[0]
        pre = images.flatten(1) @ self.w_pre
        out = {}
        if "image" in kinds:
            out["image"] = torch.nn.functional.normalize(pre @ self.w_proj, dim=-1)
        if "preproj" in kinds:
            out["preproj"] = pre
        if "patch" in kinds:
            patches = images.unfold(2, 4, 4).unfold(3, 4, 4)  # B,3,2,2,4,4
            patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(images.shape[0], 4, -1)
            out["patch"] = torch.nn.functional.normalize(patches @ self.w_pre[:48] @ self.w_proj, dim=-1)
        return out

    def encode_text(self, texts, batch_size=256):
        vecs = []
        for t in texts:
            g = torch.Generator().manual_seed(zlib.crc32(t.encode()))
            vecs.append(torch.randn(self.dim, generator=g))
        return torch.nn.functional.normalize(torch.stack(vecs), dim=-1)

    @property
    def torch_module(self):
        return self._module


@pytest.fixture
def fake_model() -> FakeVLM:
    return FakeVLM()


@pytest.fixture(scope="session")
def report_runs(tmp_path_factory) -> dict[str, Path]:
    """Two `vlmood eval` runs (tiny-test model) on the example benchmark with different scores.

    Shared by the report tests; tests that alter a run copy it first.
    """
    from vlmood.cli import main
    from vlmood.data.example import write_example

    root = tmp_path_factory.mktemp("report_runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLMOOD_CACHE", str(root / "cache"))
        bench = write_example(root / "example", per_class=8, size=32)
        common = [
            "eval",
            "--model",
            "tiny-test",
            "--benchmark",
            str(bench),
            "--no-progress",
            "--workers",
            "0",
        ]
        assert main([*common, "--scores", "mcm,energy,knn", "--out", str(root / "run_a")]) == 0
        assert main([*common, "--scores", "maxlogit,mcm", "--out", str(root / "run_b")]) == 0
    return {"a": root / "run_a", "b": root / "run_b"}


def torchrun_env(cache: Path | None = None) -> dict[str, str]:
    """The environment of a 2-process CPU torchrun test: one thread per rank, this checkout's
    ``src`` first on the path, and ``VLMOOD_CACHE`` when ``cache`` is given."""
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join(
            [str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")]
        ),
    )
    if cache is not None:
        env["VLMOOD_CACHE"] = str(cache)
    return env


#: ``python -m torch.distributed.run`` on 2 CPU processes (gloo); append a script or ``-m vlmood.cli``
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def torchrun(target: list[str], cache: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``target`` (a script and its arguments, or ``-m vlmood.cli ...``) under :data:`TORCHRUN`
    with :func:`torchrun_env`; the finished process (text output captured)."""
    return subprocess.run(
        [*TORCHRUN, *target], env=torchrun_env(cache), capture_output=True, text=True, timeout=timeout
    )


def tiny_hf_clip(path: Path):
    """A tiny random Hugging Face CLIPModel (seed 0) saved to ``path``; returns the model (eval mode)."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.CLIPConfig(
        text_config=dict(
            vocab_size=49408,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=32,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=16,
    )
    torch.manual_seed(0)
    model = transformers.CLIPModel(cfg).eval()
    model.save_pretrained(path)
    return model
