"""Scaling full fine-tuning: activation checkpointing gives the gradients and adapters of a plain run
and leaves nothing on the model; `fit --set` reaches the training settings; bf16 autocast on the
CPU; FSDP on 2 gloo ranks trains the tensors of the 1-process run and resumes from its full-tensor
checkpoint. Tiny random model."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import write_digit_images
from dist_fsdp_worker import SCALE_CFG, flyp_parts, trained_state
from vlmood.cli import main
from vlmood.data.example import write_example
from vlmood.data.sources import load_source
from vlmood.errors import UsageError
from vlmood.methods import fit_method
from vlmood.train.engine import TrainConfig, Trainer
from vlmood.train.sharding import enable_grad_checkpointing, find_blocks, is_checkpointed


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("scale")
    folder = write_digit_images(root / "digits", [0, 1, 2], per_class=4)
    return {"source": load_source(str(folder)), "root": root}


def _cfg(**kw):
    base = dict(epochs=2, batch_size=4, lr=1e-3, optimizer="adamw", weight_decay=0.1, warmup_steps=0)
    base.update(kw)
    return TrainConfig(**base)


def _instance_forwards(module) -> list[str]:
    return [n for n, m in module.named_modules() if "forward" in m.__dict__]


# ---------------------------------------------------------------------------------------------- checkpointing
def test_checkpointed_blocks_give_the_same_gradients(monkeypatch):
    """Every transformer block (2 image + 2 text) runs again in backward, the gradients are the
    plain ones, and removing it leaves no trace on the modules."""
    from open_clip.transformer import ResidualAttentionBlock

    model, module, dataset, loss_fn = flyp_parts()
    assert len(find_blocks(module)) == 4
    calls = {"n": 0}
    forward = ResidualAttentionBlock.forward

    def counting(self, *args, **kwargs):
        calls["n"] += 1
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(ResidualAttentionBlock, "forward", counting)
    batch = {"pixels": dataset.pixels[:8], "label": dataset.labels[:8]}

    def grads():
        module.zero_grad(set_to_none=True)
        calls["n"] = 0
        loss, _ = loss_fn(module, batch)
        loss.backward()
        return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}, calls["n"]

    plain, n_plain = grads()
    restore = enable_grad_checkpointing(module)
    assert is_checkpointed(module)
    ckpt, n_ckpt = grads()
    restore()
    assert not is_checkpointed(module) and _instance_forwards(module) == []
    assert n_plain == 4 and n_ckpt == 8  # each block recomputed once in backward
    assert set(plain) == set(ckpt) and len(plain) == len(list(module.parameters()))
    for k in plain:
        assert torch.allclose(plain[k], ckpt[k], rtol=1e-5, atol=1e-7), k
    with torch.no_grad():  # no recording: the blocks run once, not under checkpoint
        restore = enable_grad_checkpointing(module)
        calls["n"] = 0
        loss_fn(module, batch)
        restore()
    assert calls["n"] == 4


def test_fit_with_grad_checkpointing_is_the_same_adapter(digits, tmp_path):
    """A FLYP fit with activation checkpointing trains the tensors of one without, has the same fit
    identity (a run-only setting), and the base model leaves fit() without checkpointing."""
    from safetensors.torch import load_file

    from vlmood.models import load_model

    model = load_model("tiny-test")
    before = {k: v.clone() for k, v in model.torch_module.state_dict().items()}
    dirs = {}
    for ck in (True, False):
        dirs[ck] = fit_method(
            "flyp",
            model,
            digits["source"],
            tmp_path / f"ck{ck}",
            _cfg(grad_checkpointing=ck),
            cache_root=digits["root"] / "cache",
            progress=False,
        )
        assert not is_checkpointed(model.torch_module) and _instance_forwards(model.torch_module) == []
    a, b = (load_file(str(dirs[ck] / "adapter.safetensors")) for ck in (True, False))
    assert set(a) == set(b) and len(a) > 10
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6), k
    info = {ck: json.loads((dirs[ck] / "adapter.json").read_text()) for ck in (True, False)}
    assert info[True]["fit_identity"]["key"] == info[False]["fit_identity"]["key"]
    assert all(torch.equal(v, model.torch_module.state_dict()[k]) for k, v in before.items())


def test_training_settings_are_checked():
    for bad, needle in [
        ({"strategy": "zero3"}, "unknown strategy"),
        ({"strategy": "fsdp", "precision": "fp16"}, "bf16"),
        ({"grad_checkpointing": "yes"}, "grad_checkpointing"),
        ({"strategy": "fsdp", "val_every": 1}, "val_every"),
    ]:
        with pytest.raises(UsageError, match=needle):
            TrainConfig(**bad).check()
    # how a run uses memory and devices is not what it computes: no new identity, resume allowed
    plain = TrainConfig().identity()
    assert TrainConfig(grad_checkpointing=True, strategy="fsdp").identity() == plain


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    return write_example(tmp_path_factory.mktemp("example") / "data", per_class=8, size=32)


def test_cli_fit_set_reaches_the_training_settings(example, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("VLMOOD_CACHE", str(tmp_path / "cache"))
    common = ["fit", "ft", "--model", "tiny-test", "--benchmark", str(example), "--workers", "0"]
    common += ["--no-progress", "--shots", "2", "--epochs", "1", "--train-batch-size", "4"]
    # strategy=fsdp outside torchrun would be silently unsharded: refused in one line
    rc = main([*common, "--set", "strategy=fsdp", "--out", str(tmp_path / "fsdp")])
    assert rc == 2 and "torchrun" in capsys.readouterr().err
    # under torchrun (WORLD_SIZE set) it reaches the config; a 1-process group-less run is unsharded
    monkeypatch.setenv("WORLD_SIZE", "1")
    sets = ["--set", "grad_checkpointing=true", "--set", "strategy=fsdp", "--set", "weight_decay=0.01"]
    rc = main([*common, *sets, "--out", str(tmp_path / "ad")])
    err = capsys.readouterr().err
    assert rc == 0, err
    monkeypatch.delenv("WORLD_SIZE")
    train = json.loads((tmp_path / "ad" / "train" / "config.json").read_text())
    assert train["grad_checkpointing"] is True and train["strategy"] == "fsdp"  # fsdp: no group, unsharded
    assert train["weight_decay"] == 0.01
    rc = main([*common, "--set", "grad_ckpt=true", "--out", str(tmp_path / "bad")])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("vlmood ")]
    assert rc == 2 and len(lines) == 1 and "grad_checkpointing" in lines[0], err
    assert not (tmp_path / "bad").exists()


# ---------------------------------------------------------------------------------------------- bf16
def test_bf16_full_fine_tune_on_the_cpu(digits, tmp_path):
    """precision bf16 on the CPU: the forward runs under bf16 autocast (engine and model), the
    weights and the adapter stay float32; fp16 on the CPU is refused in one line."""
    from safetensors.torch import load_file

    from vlmood.models import load_model

    model = load_model("tiny-test", precision="bf16")
    seen = []
    block = model.torch_module.visual.transformer.resblocks[0]
    hook = block.register_forward_hook(
        lambda m, i, o: seen.append((torch.is_autocast_enabled("cpu"), o.dtype))
    )
    try:
        out = fit_method(
            "flyp",
            model,
            digits["source"],
            tmp_path / "bf16",
            _cfg(epochs=1, precision="bf16", grad_checkpointing=True),
            cache_root=digits["root"] / "cache",
            progress=False,
        )
    finally:
        hook.remove()
    assert seen and all(ac and dt == torch.bfloat16 for ac, dt in seen)
    info = json.loads((out / "adapter.json").read_text())
    assert info["run"]["precision"] == "bf16"
    assert all(v.dtype == torch.float32 for v in load_file(str(out / "adapter.safetensors")).values())
    assert math.isfinite(info["metrics"]["last"]["loss"])
    with pytest.raises(UsageError, match="fp16 needs a CUDA device"):
        fit_method(
            "flyp", load_model("tiny-test", precision="fp16"), digits["source"], tmp_path / "x", _cfg()
        )


# ---------------------------------------------------------------------------------------------- FSDP
@pytest.mark.dist
def test_fsdp_on_two_ranks_trains_the_one_process_tensors(tmp_path):
    """2 gloo ranks, FSDP2 (blocks + root sharded): the trained tensors equal the 1-process run's
    at the same global batch (with activation checkpointing on too), the caller's model gets plain
    full tensors back, the checkpoint holds full tensors in the 1-process format, and a run stopped
    after epoch 1 resumes from it to exactly the uninterrupted run."""
    from conftest import TORCHRUN, torchrun_env

    worker = str(Path(__file__).parent / "dist_fsdp_worker.py")
    proc = subprocess.Popen(
        [*TORCHRUN, worker, str(tmp_path / "ranks")],
        env=torchrun_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    # meanwhile the 1-process reference; strategy fsdp without a process group trains unsharded
    model, module, dataset, loss_fn = flyp_parts()
    before = trained_state(model)
    trainer = Trainer(module, dataset, loss_fn, SCALE_CFG(strategy="fsdp"), tmp_path / "one", progress=False)
    assert trainer._fsdp is None
    trainer.fit()
    ref = trained_state(model)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-4000:]
    got = torch.load(tmp_path / "ranks" / "ranks.pt", weights_only=True)
    assert got["world"] == 2 and got["blocks"] == 4
    assert got["proj_rows"] == (32, 64)  # each rank holds half of a parameter
    assert got["untouched_after_stop"]  # a failed run leaves the caller's model as it was
    assert all(not torch.equal(before[k], ref[k]) for k in ref)  # every tensor trains
    for k in ref:
        assert got["a"][k].shape == ref[k].shape and got["a"][k].dtype == ref[k].dtype, k
        assert torch.allclose(got["a"][k], ref[k], rtol=1e-5, atol=1e-6), k
        assert torch.equal(got["b"][k], got["c"][k]), k  # resumed = uninterrupted
    one = torch.load(tmp_path / "one" / "last.pt", weights_only=True)
    sharded = torch.load(tmp_path / "ranks" / "a" / "last.pt", weights_only=True)
    assert {k: v.shape for k, v in sharded["params"].items()} == {
        k: v.shape for k, v in one["params"].items()
    }
    for i, st in one["optimizer"]["state"].items():
        for s, v in st.items():
            assert sharded["optimizer"]["state"][i][s].shape == v.shape, (i, s)
            assert torch.allclose(sharded["optimizer"]["state"][i][s], v, rtol=1e-4, atol=1e-6), (i, s)
