"""`vlmood fit` inputs (issue 8): its own training-data resolver (no OOD sets), options it does
not use refused, strict method parameters and training settings, adapter integrity on load,
precision and world size recorded, UEO extraction options, Ctrl-C, and real DDP under torchrun
(2 gloo processes train the same adapter as 1 process at the same global batch)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import write_digit_images
from vlmood.cli import main
from vlmood.errors import UsageError
from vlmood.methods import AdapterError, create_method, fit_method, load_adapter
from vlmood.models import load_model
from vlmood.train.engine import TrainConfig


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fitdata")
    write_digit_images(root / "id", [0, 1, 2], per_class=4)
    (root / "names.txt").write_text("zero\none\ntwo\n")
    return root


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-test")


def _fit_args(digits: Path, out: Path, *extra: str) -> list[str]:
    return [
        "fit",
        "linear-probe",
        "--model",
        "tiny-test",
        "--device",
        "cpu",
        "--id",
        str(digits / "id"),
        "--classnames",
        str(digits / "names.txt"),
        "--workers",
        "0",
        "--no-progress",
        "--epochs",
        "2",
        "--train-batch-size",
        "4",
        "--out",
        str(out),
        *extra,
    ]


# ---------------------------------------------------------------------------------------------- data
def test_fit_trains_from_id_and_classnames_without_ood(digits, tmp_path, monkeypatch, capsys):
    """Before: `fit --id DIR --classnames F` failed with 'no OOD sets' (the eval-set builder)."""
    monkeypatch.setenv("VLMOOD_CACHE", str(tmp_path / "cache"))
    rc = main(_fit_args(digits, tmp_path / "ad"))
    err = capsys.readouterr().err
    assert rc == 0, err
    info = json.loads((tmp_path / "ad" / "adapter.json").read_text())
    assert info["classnames"] == ["zero", "one", "two"]
    assert info["data"]["n"] == 12


def test_fit_refuses_options_it_does_not_use(digits, tmp_path, monkeypatch, capsys):
    """Before: --ood was silently ignored."""
    monkeypatch.setenv("VLMOOD_CACHE", str(tmp_path / "cache"))
    rc = main(_fit_args(digits, tmp_path / "ad", "--ood", f"x={digits / 'id'}"))
    err = capsys.readouterr().err
    assert rc == 2
    assert "fit does not use --ood" in err and "Traceback" not in err
    assert not (tmp_path / "ad").exists()


def test_fit_without_training_data_says_what_to_pass(tmp_path, capsys):
    rc = main(["fit", "coop", "--model", "tiny-test", "--out", str(tmp_path / "ad")])
    err = capsys.readouterr().err
    assert rc == 2 and "--id" in err and "--benchmark" in err


# ---------------------------------------------------------------------------------------------- settings
@pytest.mark.parametrize(
    "params, words",
    [
        ({"n_ctx": "abc"}, ["'n_ctx'", "integer", "'abc'"]),
        ({"n_ctx": 2.5}, ["'n_ctx'", "integer", "2.5"]),
        ({"n_ctx": True}, ["'n_ctx'", "integer"]),
        ({"csc": "yes"}, ["'csc'", "true or false"]),
        ({"csc": 1.0}, ["'csc'", "true or false"]),
        ({"init_std": "small"}, ["'init_std'", "number"]),
        ({"nctx": 4}, ["unknown parameter", "'nctx'", "n_ctx, ctx_init"]),
    ],
)
def test_method_parameters_are_type_checked(params, words):
    """Before: n_ctx='abc' raised deep inside training; 2.5 and csc='yes' were accepted."""
    with pytest.raises(UsageError) as e:
        create_method("coop", **params)
    for w in words:
        assert w in str(e.value)


def test_method_parameter_types_widen_only_int_to_float():
    m = create_method("coop", init_std=1, n_ctx=4, csc=False)
    assert isinstance(m.params.init_std, float) and m.params.init_std == 1.0
    assert create_method("coop", ctx_init=None).params.ctx_init is None


@pytest.mark.parametrize(
    "kwargs, cfg_kw, words",
    [
        ({"shots": 0}, {}, ["shots", ">= 1", "0"]),
        ({"shots": -2}, {}, ["shots", "-2"]),
        ({}, {"epochs": 0}, ["epochs", "positive"]),
        ({}, {"epochs": -1}, ["epochs", "positive"]),
        ({}, {"batch_size": 0}, ["batch", "positive"]),
        ({}, {"batch_size": -4}, ["batch", "positive"]),
        ({}, {"lr": 0.0}, ["learning rate", "positive"]),
        ({}, {"lr": -0.1}, ["learning rate", "positive"]),
    ],
)
def test_bad_training_settings_are_refused_before_any_work(tiny, digits, tmp_path, kwargs, cfg_kw, words):
    """Before: shots=0 trained on everything (recording shots=0), epochs=0 wrote an untrained
    adapter, batch size 0 and lr <= 0 failed late or trained nothing."""
    from vlmood.data.sources import load_source

    cfg = TrainConfig(**{"epochs": 1, "batch_size": 4, "lr": 0.01, **cfg_kw})
    with pytest.raises(UsageError) as e:
        fit_method(
            "linear-probe",
            tiny,
            load_source(str(digits / "id")),
            tmp_path / "ad",
            cfg,
            cache_root=tmp_path / "c",
            progress=False,
            **kwargs,
        )
    for w in words:
        assert w in str(e.value)
    assert not (tmp_path / "ad").exists()
    assert not (tmp_path / "c").exists()  # refused before any feature was extracted


def test_out_naming_an_existing_file_is_refused(tiny, digits, tmp_path):
    from vlmood.data.sources import load_source

    f = tmp_path / "adapter"
    f.write_text("keep me")
    with pytest.raises(UsageError, match="existing file"):
        fit_method("linear-probe", tiny, load_source(str(digits / "id")), f, progress=False)
    assert f.read_text() == "keep me"


def test_global_batch_must_split_over_the_world_size():
    from vlmood.train.engine import rank_batch_size

    assert rank_batch_size(TrainConfig(batch_size=8), 2) == 4
    with pytest.raises(UsageError, match="global batch.*2 processes"):
        rank_batch_size(TrainConfig(batch_size=5), 2)


def test_ranks_take_contiguous_shares_of_the_one_process_batches():
    """The sampler behind DDP equivalence: W ranks together see each 1-process batch, and the
    1-process order is what earlier versions' DataLoader(RandomSampler) gave."""
    from torch.utils.data import DataLoader, RandomSampler, TensorDataset

    from vlmood.train.engine import GlobalBatchSampler

    ds = TensorDataset(torch.arange(37))
    for drop_last in (True, False):
        g = torch.Generator().manual_seed(7)
        legacy = [
            b[0].tolist()
            for b in DataLoader(
                ds, batch_size=8, sampler=RandomSampler(ds, generator=g), generator=g, drop_last=drop_last
            )
        ]
        one = list(GlobalBatchSampler(37, 8, drop_last, 7))
        assert one == legacy
        shards = [list(GlobalBatchSampler(37, 8, drop_last, 7, r, 2)) for r in range(2)]
        assert len(shards[0]) == len(shards[1]) == len(one)
        full = one if drop_last else one[:-1]  # the short last batch is filled up under DDP
        assert [a + b for a, b in zip(*shards)][: len(full)] == full
        assert all(len(b) == 4 for s in shards for b in s)


# ---------------------------------------------------------------------------------------------- records
def test_precision_and_run_are_recorded(digits, tmp_path, monkeypatch, capsys):
    """Before: --precision bf16 reached the model but adapter.json recorded train.precision fp32."""
    monkeypatch.setenv("VLMOOD_CACHE", str(tmp_path / "cache"))
    rc = main(_fit_args(digits, tmp_path / "ad", "--precision", "bf16"))
    assert rc == 0, capsys.readouterr().err
    info = json.loads((tmp_path / "ad" / "adapter.json").read_text())
    assert info["train"]["precision"] == "bf16"
    assert info["run"] == {
        "world_size": 1,
        "per_rank_batch": 4,
        "global_batch": 4,
        "steps_per_epoch": 3,
        "warmup_steps": info["train"]["warmup_steps"],
        "precision": "bf16",
        "device": "cpu",
    }


def test_the_models_precision_is_the_training_precision(digits, tmp_path):
    from vlmood.data.sources import load_source

    ad = fit_method(
        "linear-probe",
        load_model("tiny-test", precision="bf16"),
        load_source(str(digits / "id")),
        tmp_path / "ad",
        TrainConfig(epochs=1, batch_size=4),
        cache_root=tmp_path / "c",
        progress=False,
    )
    info = json.loads((ad / "adapter.json").read_text())
    assert info["train"]["precision"] == info["run"]["precision"] == "bf16"
    last = torch.load(ad / "train" / "last.pt", weights_only=True)
    assert last["config_identity"] == TrainConfig(**{**info["train"], "betas": (0.9, 0.999)}).identity()


def test_training_precision_other_than_the_models_is_refused(tiny, digits, tmp_path):
    from vlmood.data.sources import load_source

    with pytest.raises(UsageError, match="differs from the model's precision fp32"):
        fit_method(
            "linear-probe",
            tiny,
            load_source(str(digits / "id")),
            tmp_path / "ad",
            TrainConfig(epochs=1, batch_size=4, precision="bf16"),
            progress=False,
        )


# ---------------------------------------------------------------------------------------------- adapters
def _trained(digits, tmp_path, tiny) -> Path:
    from vlmood.data.sources import load_source

    return fit_method(
        "linear-probe",
        tiny,
        load_source(str(digits / "id")),
        tmp_path / "ad",
        TrainConfig(epochs=1, batch_size=4, lr=0.01),
        cache_root=tmp_path / "c",
        progress=False,
    )


def test_edited_adapter_tensors_are_refused(tiny, digits, tmp_path):
    """Before: edited tensors with weights_sha256 removed loaded, credited to the original key."""
    ad = _trained(digits, tmp_path, tiny)
    load_adapter(ad, tiny)  # the artifact as written loads
    info = json.loads((ad / "adapter.json").read_text())
    tensors = load_file(str(ad / "adapter.safetensors"))
    tensors["linear.bias"] = tensors["linear.bias"] + 1.0
    save_file(tensors, str(ad / "adapter.safetensors"))
    del info["weights_sha256"]
    (ad / "adapter.json").write_text(json.dumps(info))
    with pytest.raises(AdapterError, match="tensors hash to .* the weights were changed"):
        load_adapter(ad, tiny)
    del info["tensors_sha256"]
    (ad / "adapter.json").write_text(json.dumps(info))
    with pytest.raises(AdapterError, match="has no tensors_sha256"):
        load_adapter(ad, tiny)


def test_edited_adapter_params_are_refused(tiny, digits, tmp_path):
    ad = _trained(digits, tmp_path, tiny)
    info = json.loads((ad / "adapter.json").read_text())
    info["params"]["standardize"] = not info["params"]["standardize"]
    (ad / "adapter.json").write_text(json.dumps(info))
    with pytest.raises(AdapterError, match="do not give its adapter_key"):
        load_adapter(ad, tiny)


# ---------------------------------------------------------------------------------------------- UEO
def test_ueo_extraction_gets_skip_corrupt_and_workers(tmp_path, monkeypatch):
    """Before: UEO encoded its images with default options (a corrupt image failed the run even
    with skip_corrupt; --workers never reached its extraction)."""
    import vlmood.features.extract as X
    from vlmood.data.sources import load_source

    root = write_digit_images(tmp_path / "imgs", [0, 1, 2], per_class=3)
    (root / "one" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    seen = []
    real = X.extract_features

    def spy(*a, **kw):
        seen.append(kw)
        return real(*a, **kw)

    monkeypatch.setattr(X, "extract_features", spy)
    out = fit_method(
        "ueo",
        load_model("tiny-test"),
        load_source(str(root)),
        tmp_path / "ueo",
        TrainConfig(epochs=1, batch_size=3, lr=0.01, optimizer="sgd", momentum=0.0),
        params={"augment": False},
        cache_root=tmp_path / "c",
        progress=False,
        extract_options={"skip_corrupt": True, "num_workers": 0, "batch_size": 5},
    )
    # what each extraction ran with: its options object, with any keyword given over it
    used = [X.ExtractOptions.of(kw.pop("options", None), **kw) for kw in seen]
    assert used and all(o.skip_corrupt and o.num_workers == 0 and o.batch_size == 5 for o in used)
    info = json.loads((out / "adapter.json").read_text())
    assert info["data"]["n"] == 9 and len(info["data"]["skipped"]) == 1


# ---------------------------------------------------------------------------------------------- Ctrl-C
def test_ctrl_c_during_fit_leaves_a_resumable_folder(digits, tmp_path, monkeypatch, capsys):
    import vlmood.train.engine as E

    monkeypatch.setenv("VLMOOD_CACHE", str(tmp_path / "cache"))
    real = E.Trainer.save_checkpoint
    calls = {"n": 0}

    def interrupt_after_first_epoch(self):
        real(self)
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(E.Trainer, "save_checkpoint", interrupt_after_first_epoch)
    out = tmp_path / "ad"
    rc = main(_fit_args(digits, out))
    err = capsys.readouterr().err
    assert rc == 1 and "interrupted" in err and "--resume" in err and "Traceback" not in err
    left = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    assert not [p for p in left if p.endswith(".tmp")], left  # nothing half-written
    assert not (out / "adapter.json").exists() and not (out / "adapter.safetensors").exists()
    with pytest.raises(AdapterError):
        load_adapter(out, load_model("tiny-test"))
    rc = main(_fit_args(digits, out, "--resume"))
    assert rc == 0, capsys.readouterr().err
    assert json.loads((out / "adapter.json").read_text())["metrics"]["epochs"] == 2


# ---------------------------------------------------------------------------------------------- DDP
def _torchrun_fit(args: list[str], cache: Path) -> subprocess.CompletedProcess:
    from conftest import torchrun

    return torchrun(["-m", "vlmood.cli", *args], cache=cache)


@pytest.mark.dist
@pytest.mark.parametrize(
    "method, extra",
    [("linear-probe", []), ("coop", ["--param", "n_ctx=2", "--lr", "0.05"])],
    ids=["linear-probe", "coop"],
)
def test_two_process_fit_equals_one_process_fit(digits, tmp_path, monkeypatch, capsys, method, extra):
    """Before: torchrun fit never initialised the process group: each rank trained the whole run
    alone into the same --out, and warmup in epochs became W epochs."""
    args = _fit_args(digits, tmp_path / "one", *extra)
    args[1] = method
    monkeypatch.setenv("VLMOOD_CACHE", str(tmp_path / "cache1"))
    assert main(args) == 0, capsys.readouterr().err
    two = [a if a != str(tmp_path / "one") else str(tmp_path / "two") for a in args]
    p = _torchrun_fit(two, tmp_path / "cache2")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert p.stdout.count("adapter: ") == 1  # one rank reports (and writes)
    a = load_file(str(tmp_path / "one" / "adapter.safetensors"))
    b = load_file(str(tmp_path / "two" / "adapter.safetensors"))
    assert sorted(a) == sorted(b)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)
    ia = json.loads((tmp_path / "one" / "adapter.json").read_text())
    ib = json.loads((tmp_path / "two" / "adapter.json").read_text())
    assert ib["run"]["world_size"] == 2 and ib["run"]["per_rank_batch"] == 2
    assert ib["run"]["global_batch"] == ia["run"]["global_batch"] == 4
    assert ib["train"] == ia["train"]  # same global batch, same warmup steps, same schedule
    assert ib["run"]["steps_per_epoch"] == ia["run"]["steps_per_epoch"] == 3
    rows = [json.loads(x) for x in (tmp_path / "two" / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows if r["kind"] == "epoch"] == [0, 1]  # one writer, no doubled rows
    np.testing.assert_allclose(
        [r["loss"] for r in rows if r["kind"] == "epoch"],
        [
            r["loss"]
            for r in map(json.loads, (tmp_path / "one" / "train" / "metrics.jsonl").read_text().splitlines())
            if r["kind"] == "epoch"
        ],
        rtol=1e-4,
    )


@pytest.mark.dist
def test_two_process_fit_refuses_a_batch_it_cannot_split(digits, tmp_path):
    args = _fit_args(digits, tmp_path / "two")
    args[args.index("--train-batch-size") + 1] = "5"
    p = _torchrun_fit(args, tmp_path / "cache")
    assert p.returncode != 0
    # (torchrun's launcher adds its own report of the failed children)
    assert "vlmood fit: error: batch size 5 is the global batch and must split evenly over the 2" in p.stderr
    assert not (tmp_path / "two").exists()


def test_a_fit_that_fails_before_its_first_checkpoint_leaves_nothing(digits, tmp_path, monkeypatch, capsys):
    """Before: a check after the few-shot sampling (e.g. CoOp's batch larger than the data)
    failed with split.json already written into --out."""
    import vlmood.methods.base as B

    monkeypatch.setenv("VLMOOD_CACHE", str(tmp_path / "cache"))
    real = B.resolve_train_config

    def refuse(*a, **k):
        raise UsageError("the training set has 3 samples, fewer than one batch (--train-batch-size)")

    monkeypatch.setattr(B, "resolve_train_config", refuse)
    out = tmp_path / "ad"
    rc = main(_fit_args(digits, out))
    err = capsys.readouterr().err
    assert rc == 2 and "--train-batch-size" in err and "Traceback" not in err
    assert not out.exists()
    monkeypatch.setattr(B, "resolve_train_config", real)
    # --resume on a folder without a checkpoint starts afresh instead of failing
    rc = main(_fit_args(digits, out, "--resume"))
    assert rc == 0, capsys.readouterr().err
    assert (out / "adapter.json").exists()


def test_fit_rerun_reuses_the_same_settings_and_refuses_others(digits, tmp_path, monkeypatch, capsys):
    """Rerunning `vlmood fit` (or a notebook cell) into a finished adapter: kept as it is; with other
    settings: refused naming what differs (before: "already holds a checkpoint; pass --resume")."""
    monkeypatch.setenv("VLMOOD_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "ad"
    assert main(_fit_args(digits, out)) == 0, capsys.readouterr().err
    stamp = (out / "adapter.json").stat().st_mtime_ns
    assert main(_fit_args(digits, out)) == 0, capsys.readouterr().err
    assert (out / "adapter.json").stat().st_mtime_ns == stamp
    rc = main(_fit_args(digits, out, "--lr", "0.5"))
    err = capsys.readouterr().err
    assert rc == 2 and "other settings" in err and "train.lr" in err


def test_fit_label_names_the_adapter_in_results_and_reports(digits, tmp_path, monkeypatch, capsys):
    from vlmood.report.load import load_runs

    monkeypatch.setenv("VLMOOD_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "ad"
    assert main(_fit_args(digits, out, "--label", "probe  A")) == 0, capsys.readouterr().err
    assert json.loads((out / "adapter.json").read_text())["label"] == "probe A"
    run = tmp_path / "run"
    args = ["eval", "--model", "tiny-test", "--device", "cpu", "--id", str(digits / "id"), "--classnames"]
    args += [
        str(digits / "names.txt"),
        "--ood",
        f"x={digits / 'id'}",
        "--adapter",
        str(out),
        "--scores",
        "mcm",
    ]
    assert main([*args, "--workers", "0", "--no-progress", "--out", str(run)]) == 0, capsys.readouterr().err
    assert json.loads((run / "results.json").read_text())["adapter"]["label"] == "probe A"
    assert [r.label for r in load_runs([run])] == ["probe A"]
