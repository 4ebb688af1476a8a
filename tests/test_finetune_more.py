"""Full fine-tuning (FT, LP-FT, FLYP, CMA) and WiSE-FT, beyond tests/test_finetune.py:

- a run SIGKILLed from outside right after its epoch-1 checkpoint (FT through `vlmood fit`, FLYP with
  several caption templates, LP-FT in its probe phase and in its fine-tuning phase) and resumed ends
  with exactly the uninterrupted run's adapter tensors and per-step log;
- on a BatchNorm model only the intended parameters change (never buffers), the base model leaves
  fit() as it came, and the adapter holds exactly the tensors that changed;
- a tiny random Hugging Face ``CLIPModel``: FT and FLYP adapters trained, loaded onto a fresh model,
  evaluated;
- bad input (alpha, lambda, endpoints, edited tensors) gives one clear error, through the CLI one line
  and exit code 2;
- WiSE-FT at alpha 0 / 1 gives the zero-shot / fine-tuned model's features exactly.

Everything runs single-threaded (bitwise equality across processes) on tiny random models.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import tiny_hf_clip, write_digit_images
from vlmood.cli import main
from vlmood.data.sources import load_source
from vlmood.errors import UsageError
from vlmood.methods import AdapterError, TrainData, create_method, fit_method, load_adapter
from vlmood.methods.finetune import HEAD_KEY, MODEL_PREFIX, image_tower_names, template_text_features
from vlmood.methods.wise_ft import read_endpoint, wise_ft_adapters
from vlmood.models import load_model
from vlmood.train import engine
from vlmood.train.engine import CHECKPOINT_NAME, TrainConfig

EPOCHS = 3
BATCH = 4
PER_CLASS = 4  # 3 classes x 4 images: 3 optimiser steps per epoch
STEPS = 3 * PER_CLASS // BATCH
TIME_KEYS = ("time_s", "samples_per_s")
RN_ARCH = "vlmood-rn-bn-ft-test"
RN_CONFIG = {  # open_clip ModifiedResNet (BatchNorm2d) at 32 px with tiny-test's text tower
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}

# case -> (method, params); every case trains with warmup + cosine and AdamW (state + weight decay),
# so a resume that lost the step, the schedule or the optimiser state would show
CASES = {
    "ft": ("ft", {}),
    "flyp": ("flyp", {"templates": "imagenet7"}),  # 7 captions per class: one drawn per image and step
    "lp-ft": ("lp-ft", {"lp_epochs": EPOCHS}),
}
TRAIN = dict(
    epochs=EPOCHS,
    batch_size=BATCH,
    lr=1e-3,
    optimizer="adamw",
    weight_decay=0.1,
    schedule="cosine",
    warmup_steps=2,
    log_every=1,
)


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**{**TRAIN, **kw})


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("ftmore")
    folder = write_digit_images(root / "digits", [0, 1, 2], per_class=PER_CLASS)
    return {"root": root, "folder": folder, "source": load_source(str(folder))}


def _fit(world, case: str, out: Path, resume: bool = False) -> Path:
    method, params = CASES[case]
    return fit_method(
        method,
        load_model("tiny-test"),  # a fresh base model every run
        world["source"],
        out,
        cfg=_cfg(),
        params=params,
        cache_root=out.parent / f"{out.name}-cache",
        progress=False,
        resume=resume,
    )


@pytest.fixture(scope="module")
def uninterrupted(world):
    done: dict[str, Path] = {}

    def get(case: str) -> Path:
        if case not in done:
            done[case] = _fit(world, case, world["root"] / "full" / case)
        return done[case]

    return get


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.torch_module.state_dict().items()}


def _changed(before, after) -> list[str]:
    assert set(before) == set(after)
    return sorted(k for k in before if not torch.equal(before[k], after[k]))


# ---------------------------------------------------------------------------------------------- kill + resume
CHILD = """
import json, sys, time
from pathlib import Path

import torch

torch.set_num_threads(1)
from vlmood.train import engine

spec = json.loads(Path(sys.argv[1]).read_text())
real = engine.Trainer.save_checkpoint


def stall(self):
    real(self)
    if Path(self.out).resolve() == Path(spec["stall_dir"]).resolve() and self.epoch == 1:
        Path(spec["marker"]).touch()
        time.sleep(300)  # the epoch-1 checkpoint is on disk: wait here for the kill


engine.Trainer.save_checkpoint = stall
if spec["mode"] == "cli":
    from vlmood.cli import main

    main(spec["argv"])
else:
    from vlmood.data.sources import load_source
    from vlmood.methods import fit_method
    from vlmood.models import load_model
    from vlmood.train.engine import TrainConfig

    fit_method(spec["method"], load_model("tiny-test"), load_source(spec["source"]), spec["out"],
               cfg=TrainConfig(**spec["cfg"]), params=spec["params"], cache_root=spec["cache"],
               progress=False)
sys.exit(3)  # the run finished: the kill never came
"""


def _kill_after_first_checkpoint(spec: dict, tmp_path: Path, env: dict | None = None) -> None:
    """Run the training ``spec`` in a fresh interpreter and SIGKILL it once the epoch-1 checkpoint
    of ``spec["stall_dir"]`` is written (the child waits there, so the kill lands there)."""
    script, spec_file, marker = tmp_path / "child.py", tmp_path / "spec.json", tmp_path / "stalled"
    script.write_text(textwrap.dedent(CHILD))
    spec_file.write_text(json.dumps({**spec, "marker": str(marker)}))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **(env or {})}
    with open(tmp_path / "child.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, str(script), str(spec_file)], stdout=log, stderr=subprocess.STDOUT, env=env
        )
        try:
            deadline = time.monotonic() + 120
            while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            alive = proc.poll() is None
            if alive:
                proc.send_signal(signal.SIGKILL)
            rc = proc.wait(30)
        finally:
            if proc.poll() is None:  # pragma: no cover - a hung child
                proc.kill()
                proc.wait()
    assert alive and marker.exists() and rc == -signal.SIGKILL, (tmp_path / "child.log").read_text()[-3000:]


@contextlib.contextmanager
def _count_batches():
    """Count the batches that reach a loss (every phase, every engine) inside the block."""
    real = engine._LossModule.forward
    seen = [0]

    def counted(self, batch):
        seen[0] += 1
        return real(self, batch)

    engine._LossModule.forward = counted
    try:
        yield seen
    finally:
        engine._LossModule.forward = real


def _log_rows(path: Path) -> list[dict]:
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIME_KEYS} for r in rows]


def _assert_same_run(full: Path, resumed: Path) -> None:
    a = load_file(str(full / "adapter.safetensors"))
    b = load_file(str(resumed / "adapter.safetensors"))
    assert sorted(a) == sorted(b)
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"resumed tensors differ from the uninterrupted run's: {different[:5]}"
    logs = [p.relative_to(full) for p in full.rglob("metrics.jsonl")]
    assert logs
    for rel in logs:  # per-step losses and learning rates (both LP-FT phases), no duplicated rows
        assert _log_rows(resumed / rel) == _log_rows(full / rel), rel
    ia, ib = (json.loads((d / "adapter.json").read_text()) for d in (full, resumed))
    for key in ("train", "params", "classnames", "tensors_sha256", "adapter_key"):
        assert ia[key] == ib[key], key
    assert ia["metrics"].get("lp") == ib["metrics"].get("lp")


def _killed_state(ckpt: Path) -> dict:
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["epoch"] == 1 and state["step"] == STEPS
    return state


@pytest.mark.parametrize(
    "case, phase",
    [("ft", "train"), ("flyp", "train"), ("lp-ft", "lp"), ("lp-ft", "train")],
    ids=["ft", "flyp", "lp-ft-probe-phase", "lp-ft-finetune-phase"],
)
def test_resume_after_sigkill_equals_uninterrupted_run(world, uninterrupted, case, phase, tmp_path):
    full = uninterrupted(case)
    method, params = CASES[case]
    out = tmp_path / "killed"
    stall_dir = out / "train" / ("lp" if phase == "lp" else "")
    spec = {
        "mode": "api",
        "method": method,
        "params": params,
        "cfg": TRAIN,
        "source": str(world["folder"]),
        "out": str(out),
        "cache": str(tmp_path / "killed-cache"),
        "stall_dir": str(stall_dir),
    }
    _kill_after_first_checkpoint(spec, tmp_path)
    state = _killed_state(stall_dir / CHECKPOINT_NAME)
    assert not (out / "adapter.json").exists()
    if phase == "lp":  # killed in the probe phase: the fine-tuning phase never started
        assert not (out / "train" / CHECKPOINT_NAME).exists()

    with _count_batches() as seen:
        _fit(world, case, out, resume=True)
    # it continued from the checkpoint (a rerun from scratch would give the same tensors):
    # only what was left of the killed phase ran, and all of a phase that had not started
    assert seen[0] == (EPOCHS - 1) * STEPS + (EPOCHS * STEPS if phase == "lp" else 0)
    _assert_same_run(full, out)
    final = load_file(str(out / "adapter.safetensors"))
    if phase == "train":  # epochs 2 and 3 ran after the resume: the tensors moved on from the checkpoint
        moved = [
            n
            for n, v in state["params"].items()
            if not torch.equal(v, final.get(HEAD_KEY if n == "head.weight" else MODEL_PREFIX + n[9:], v))
        ]
        assert moved


def test_cli_fit_killed_after_first_epoch_then_resumed(world, tmp_path, monkeypatch, capsys):
    """`vlmood fit ft` with a DataLoader worker (augmentation drawn there), killed from outside
    after epoch 1, then `vlmood fit ... --resume`: the uninterrupted run's adapter."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("VLMOOD_CACHE", str(cache))
    argv = ["fit", "ft", "--model", "tiny-test", "--id", str(world["folder"]), "--no-progress"]
    argv += ["--workers", "1", "--epochs", str(EPOCHS), "--train-batch-size", str(BATCH), "--lr", "1e-3"]
    assert main([*argv, "--out", str(tmp_path / "full")]) == 0, capsys.readouterr().err
    killed = tmp_path / "killed"
    spec = {"mode": "cli", "argv": [*argv, "--out", str(killed)], "stall_dir": str(killed / "train")}
    _kill_after_first_checkpoint(spec, tmp_path, env={"VLMOOD_CACHE": str(cache)})
    _killed_state(killed / "train" / CHECKPOINT_NAME)
    with _count_batches() as seen:
        assert main([*argv, "--out", str(killed), "--resume"]) == 0, capsys.readouterr().err
    assert seen[0] == (EPOCHS - 1) * STEPS  # epochs 2 and 3 only
    _assert_same_run(tmp_path / "full", killed)


# ---------------------------------------------------------------------------------------------- parameters
@pytest.fixture(scope="module")
def bn_spec(world):
    import open_clip

    cfg_file = world["root"] / f"{RN_ARCH}.json"
    cfg_file.write_text(json.dumps(RN_CONFIG))
    open_clip.add_model_config(cfg_file)
    return f"open_clip:{RN_ARCH}"


@pytest.mark.parametrize(
    "method, params",
    [("ft", {}), ("lp-ft", {"lp_epochs": 1}), ("flyp", {}), ("cma", {"lam": 0.5})],
)
def test_only_the_intended_tensors_change_on_a_batchnorm_model(world, bn_spec, method, params, tmp_path):
    model = load_model(bn_spec)
    module = model.torch_module
    module.text_projection.requires_grad_(False)  # fit() must give back the flags it found
    flags = {n: p.requires_grad for n, p in module.named_parameters()}
    before = _state(model)
    base_buffers = {n: b.detach().clone() for n, b in module.named_buffers()}  # attn_mask: not in state_dict
    buffers = set(base_buffers)
    assert any(n.endswith("running_mean") for n in buffers)  # BatchNorm statistics
    out = fit_method(
        method,
        model,
        world["source"],
        tmp_path / method,
        _cfg(epochs=2),
        params,
        cache_root=tmp_path / "cache",
        progress=False,
    )
    # the base model leaves fit() as it came: every parameter and buffer, the flags, its identity
    assert _changed(before, _state(model)) == []
    assert {n: p.requires_grad for n, p in module.named_parameters()} == flags
    assert "adapter" not in model.identity.extra
    # the backbone trained in eval mode: the checkpoint's buffers are the base model's
    ckpt = torch.load(out / "train" / CHECKPOINT_NAME, weights_only=True)
    saved = {n[9:]: b for n, b in ckpt["buffers"].items() if n.startswith("backbone.")}
    assert saved.keys() == buffers
    assert all(torch.equal(b, base_buffers[n]) for n, b in saved.items())
    assert all(torch.equal(b, base_buffers[n]) for n, b in module.named_buffers())

    fresh = copy.deepcopy(model)
    load_adapter(out, fresh)
    after = _state(fresh)
    changed = _changed(before, after)
    assert changed and not set(changed) & buffers, set(changed) & buffers
    tensors = load_file(str(out / "adapter.safetensors"))
    head = {HEAD_KEY} if method in ("ft", "lp-ft") else set()
    assert set(tensors) == {MODEL_PREFIX + n for n in changed} | head  # the changed tensors, nothing else
    assert all(torch.equal(tensors[MODEL_PREFIX + n], after[n]) for n in changed)
    visual = set(image_tower_names(module))
    if head:  # the image tower (+ head) only: no text tower, no logit scale
        assert set(changed) <= visual
        assert fresh.logit_scale == model.logit_scale
    else:  # both towers and the logit scale
        assert set(changed) & visual and set(changed) - visual - {"logit_scale"}
        assert "logit_scale" in changed and fresh.logit_scale != model.logit_scale


# ---------------------------------------------------------------------------------------------- Hugging Face
@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    from vlmood.data.example import write_example

    root = tmp_path_factory.mktemp("hf")
    tiny_hf_clip(root / "clip")
    return {"spec": f"hf:{root / 'clip'}", "bench": write_example(root / "example", per_class=4, size=32)}


@pytest.mark.parametrize("method", ["ft", "flyp"])
def test_hugging_face_clip_fine_tune_round_trip(hf, method, tmp_path):
    import vlmood

    model = load_model(hf["spec"])
    before = _state(model)
    bench = vlmood.load_benchmark(hf["bench"])
    cache = tmp_path / "cache"
    ad = vlmood.fit(
        method, model, bench, out=tmp_path / method, shots=2, epochs=2, batch_size=4, lr=1e-3,
        train={"warmup_steps": 0}, cache_dir=cache, progress=False,
    )  # fmt: skip
    assert ad.kind == "finetune"
    assert _changed(before, _state(model)) == [] and "adapter" not in model.identity.extra

    fresh = load_model(hf["spec"])
    loaded = load_adapter(tmp_path / method, fresh)
    changed = set(_changed(before, _state(fresh)))
    visual = set(image_tower_names(fresh.torch_module))
    assert any(n.startswith("vision_model.") for n in changed)
    if method == "ft":
        assert changed <= visual and fresh.logit_scale == model.logit_scale
    else:
        assert any(n.startswith("text_model.") for n in changed) and "logit_scale" in changed
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base_f = model.encode_image_features(images)["image"]
        ft_f = fresh.encode_image_features(images)["image"]
    assert not torch.allclose(base_f, ft_f)
    names = loaded.classnames
    zs_text = template_text_features(model, names, ["a photo of a {}."])
    assert not (loaded.text_features() == zs_text).all()
    if method == "flyp":  # the fine-tuned text tower's class features
        assert loaded.text_features() == pytest.approx(
            template_text_features(fresh, names, ["a photo of a {}."]), abs=0
        )

    res = vlmood.evaluate(
        model, bench, ["mcm", "energy"], adapter=tmp_path / method, cache_dir=cache, progress=False
    ).to_dict()
    zs = vlmood.evaluate(model, bench, ["mcm"], cache_dir=cache, progress=False).to_dict()
    assert res["adapter"]["method"] == method and res["adapter"]["kind"] == "finetune"
    assert res["scores"]["mcm"]["per_set"] != zs["scores"]["mcm"]["per_set"]
    assert _changed(before, _state(model)) == []


# ---------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("alpha", ["abc", float("nan"), float("inf"), True, [0.5]])
def test_wise_ft_alpha_must_be_a_number(alpha):
    with pytest.raises(UsageError, match="alpha"):
        create_method("wise-ft", endpoint="x", alpha=alpha)


def test_wise_ft_adapters_check_every_alpha_first(uninterrupted, tmp_path):
    with pytest.raises(UsageError, match=r"\[0, 1\]"):
        wise_ft_adapters(load_model("tiny-test"), uninterrupted("ft"), [0.5, "x"], tmp_path / "w")
    assert not (tmp_path / "w").exists()


def test_cma_lambda_through_fit(world, tmp_path):
    model = load_model("tiny-test")
    for params, needle in [({}, "lam=0.001"), ({"lam": -0.1}, ">= 0"), ({"lam": "x"}, "lam")]:
        with pytest.raises(UsageError, match=needle):
            fit_method("cma", model, world["source"], tmp_path / "c", _cfg(), params, progress=False)
    assert not (tmp_path / "c").exists()


@pytest.fixture(scope="module")
def bad_endpoints(world, uninterrupted):
    """Endpoints WiSE-FT must refuse: a linear probe, a missing folder, edited tensors."""
    root = world["root"] / "bad"
    feats = torch.nn.functional.normalize(
        torch.randn(12, 32, generator=torch.Generator().manual_seed(0)), dim=-1
    )
    data = TrainData(
        ["zero", "one", "two"], [0, 1, 2] * 4, {"image": feats.numpy(), "preproj": feats.numpy()}
    )
    probe = fit_method(
        "linear-probe", load_model("tiny-test"), data, root / "probe", TrainConfig(epochs=1, batch_size=4),
        progress=False,
    )  # fmt: skip
    edited = root / "edited"
    shutil.copytree(uninterrupted("ft"), edited)
    tensors = load_file(str(edited / "adapter.safetensors"))
    tensors[HEAD_KEY] = tensors[HEAD_KEY] + 1
    save_file(tensors, str(edited / "adapter.safetensors"))
    # the same edit with adapter.json's file sha updated: the tensors' own hash still gives it away
    resealed = root / "resealed"
    shutil.copytree(edited, resealed)
    from vlmood.utils import sha256_file

    info = json.loads((resealed / "adapter.json").read_text())
    info["weights_sha256"] = sha256_file(resealed / "adapter.safetensors")
    (resealed / "adapter.json").write_text(json.dumps(info))
    return {
        "probe": (probe, UsageError, "full fine-tune"),
        "missing": (root / "nowhere", AdapterError, "does not exist"),
        "edited": (edited, AdapterError, "sha256"),
        "resealed": (resealed, AdapterError, "changed after training"),
    }


@pytest.mark.parametrize("which", ["probe", "missing", "edited", "resealed"])
def test_wise_ft_refuses_bad_endpoints(bad_endpoints, which, world, tmp_path, capsys):
    path, err, needle = bad_endpoints[which]
    model = load_model("tiny-test")
    with pytest.raises(err, match=needle):
        read_endpoint(path, model)
    with pytest.raises(err, match=needle):
        wise_ft_adapters(model, path, [0.5], tmp_path / "w", progress=False)
    assert not (tmp_path / "w" / "alpha0.5").exists()
    if which in ("edited", "resealed"):
        with pytest.raises(AdapterError, match=needle):
            load_adapter(path, load_model("tiny-test"))
    args = ["fit", "wise-ft", "--model", "tiny-test", "--id", str(world["folder"]), "--workers", "0"]
    args += ["--no-progress", "--param", f"endpoint={path}", "--out", str(tmp_path / "cli")]
    _one_line(main(args), capsys.readouterr().err, needle)
    assert not (tmp_path / "cli").exists()


def _one_line(rc: int, err: str, *needles: str) -> None:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith("vlmood fit: error:"), lines[0]
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.mark.parametrize(
    "method, params, needles",
    [
        ("wise-ft", ["endpoint=x", "alpha=abc"], ["alpha", "number"]),
        ("wise-ft", ["endpoint=x", "alpha=nan"], ["alpha"]),
        ("wise-ft", ["endpoint=x", "alpha=true"], ["alpha", "number"]),
        ("wise-ft", ["alpha=0.5"], ["endpoint"]),
        ("wise-ft", ["endpoint=x", "alphas=0,abc,1"], ["alphas", "[0, 1]"]),
        ("wise-ft", ["endpoint=x", "alphas=0,1.5"], ["alpha", "[0, 1]"]),
        ("wise-ft", ["endpoint=x", "alphas=0.5,0.5"], ["alphas repeated"]),
        ("cma", ["lam=abc"], ["lam"]),
        ("cma", ["lam=-0.001"], ["lam", ">= 0"]),
        ("lp-ft", ["lp_epochs=0"], ["lp_epochs", ">= 1"]),
    ],
)
def test_cli_bad_values_give_one_line(world, method, params, needles, tmp_path, capsys):
    args = ["fit", method, "--model", "tiny-test", "--id", str(world["folder"]), "--workers", "0"]
    for p in params:
        args += ["--param", p]
    _one_line(
        main([*args, "--no-progress", "--out", str(tmp_path / "ad")]), capsys.readouterr().err, *needles
    )
    assert not (tmp_path / "ad").exists()


# ---------------------------------------------------------------------------------------------- WiSE-FT end to end
def test_wise_ft_alpha_0_and_1_give_the_endpoint_models_features(world, uninterrupted, tmp_path):
    """FLYP endpoint (both towers and the logit scale): loaded WiSE-FT adapters at alpha 0 / 1 give
    exactly the base / fine-tuned model's image features (every kind), text embeddings, class
    features and logit scale."""
    endpoint = uninterrupted("flyp")
    base = load_model("tiny-test")
    d0, d1 = wise_ft_adapters(base, endpoint, [0.0, 1.0], tmp_path / "w", progress=False)
    models = {k: load_model("tiny-test") for k in ("a0", "a1", "ft")}
    ads = {k: load_adapter(d, models[k]) for k, d in (("a0", d0), ("a1", d1), ("ft", endpoint))}
    pre = models["ft"].preprocess
    src = world["source"]
    from PIL import Image

    images = torch.stack([pre(Image.open(src.samples[i].path).convert("RGB")) for i in range(0, len(src), 3)])
    prompts = ["a photo of a zero.", "art of the two.", "something else entirely"]
    kinds = ("image", "preproj", "patch")

    def features(m):
        with torch.no_grad():
            return {**m.encode_image_features(images, kinds), "text": m.encode_text(prompts)}

    f_base, f0, f1, f_ft = (features(m) for m in (base, models["a0"], models["a1"], models["ft"]))
    assert not torch.equal(f_base["image"], f_ft["image"])  # the two ends differ
    for k in f_base:
        assert torch.equal(f0[k], f_base[k]), k
        assert torch.equal(f1[k], f_ft[k]), k
    assert (
        models["a0"].logit_scale == base.logit_scale and models["a1"].logit_scale == models["ft"].logit_scale
    )
    templates = ads["ft"].templates
    assert len(templates) == 7
    zs = template_text_features(base, ads["a0"].classnames, templates)
    assert (ads["a0"].text_features() == zs).all()
    assert (ads["a1"].text_features() == ads["ft"].text_features()).all()


def test_cli_fit_wise_ft_alphas_writes_one_adapter_per_alpha(world, uninterrupted, tmp_path, capsys):
    """`vlmood fit wise-ft --param alphas=...` writes OUT/alpha<a>/ for each alpha (no training
    data needed), each loadable; alpha 1 holds the endpoint's tensors exactly."""
    from safetensors.torch import load_file

    from vlmood.cli import main

    endpoint = uninterrupted("ft")
    out = tmp_path / "wise"
    args = ["fit", "wise-ft", "--model", "tiny-test", "--param", f"endpoint={endpoint}"]
    rc = main(args + ["--param", "alphas=0,0.5,1", "--out", str(out), "--no-progress"])
    text = capsys.readouterr().out
    assert rc == 0 and "alpha 0.5: adapter" in text
    assert sorted(p.name for p in out.iterdir()) == ["alpha0", "alpha0.5", "alpha1"]
    want = load_file(str(endpoint / "adapter.safetensors"))
    got = load_file(str(out / "alpha1" / "adapter.safetensors"))
    assert set(got) == set(want) and all(torch.equal(got[k], want[k].float()) for k in want)
    ad = load_adapter(out / "alpha0.5", load_model("tiny-test"))
    assert ad.info["params"]["alpha"] == 0.5


def test_interrupted_training_with_other_data_or_settings_is_refused(world, uninterrupted, tmp_path):
    """A checkpoint left by a killed run is continued only by a run of the same fit identity: other
    shots (other training data) or settings are refused naming what differs, before any work."""
    import shutil

    from vlmood.train.engine import ResumeError

    out = tmp_path / "ft"
    shutil.copytree(uninterrupted("ft"), out)
    for name in ("adapter.json", "adapter.safetensors"):  # as if killed after its last checkpoint
        (out / name).unlink()
    assert (out / "train" / "fit_identity.json").is_file()
    method, params = CASES["ft"]

    def fit(**kw):
        return fit_method(
            method,
            load_model("tiny-test"),
            world["source"],
            out,
            cfg=_cfg(**kw.pop("cfg", {})),
            params=params,
            cache_root=tmp_path / "cache",
            progress=False,
            reuse=True,
            **kw,
        )

    with pytest.raises(ResumeError, match="different training settings or data.*shots: None -> 2"):
        fit(shots=2)
    with pytest.raises(ResumeError, match=r"train\.lr: 0\.001 -> 0\.01"):
        fit(cfg={"lr": 1e-2})
    fit()  # the same settings continue the checkpoint to the same adapter
    assert (out / "adapter.json").is_file()


def test_review_mistakes_give_one_line(world, uninterrupted, tmp_path, capsys):
    """Settings that would be silently ignored or misused are refused in one line (exit 2)."""
    from vlmood.cli import main

    folder = str(world["folder"])
    base = ["fit", "ft", "--model", "tiny-test", "--id", folder, "--workers", "0", "--no-progress"]
    cases = [
        (base + ["--set", "tensorboard=true", "--out", str(tmp_path / "a")], "use --tensorboard"),
        (base + ["--set", "val_every=1", "--out", str(tmp_path / "b")], "use --val-every"),
        (base + ["--set", "strategy=fsdp", "--out", str(tmp_path / "c")], "torchrun"),
        (
            [
                "fit",
                "flyp",
                "--model",
                "tiny-test",
                "--id",
                folder,
                "--workers",
                "0",
                "--train-batch-size",
                "1",
            ]
            + ["--out", str(tmp_path / "d")],
            "at least 2 images per batch",
        ),
        (
            ["fit", "wise-ft", "--model", "tiny-test", "--param", f"endpoint={uninterrupted('ft')}"]
            + ["--param", "alphas=0,1", "--param", "alpha=0.3", "--out", str(tmp_path / "e")],
            "not both",
        ),
    ]
    for args, needle in cases:
        rc = main(args)
        err = capsys.readouterr().err
        assert rc == 2 and needle in err and "Traceback" not in err, (args, err)
        assert not Path(args[-1]).exists()
