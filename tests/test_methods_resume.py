"""Resume after a real kill reproduces the uninterrupted run bit for bit, for every adaptation method.

A killed run is a child process that gets SIGKILL (no exception handler, ``finally`` block or atexit
hook runs, as with ``kill -9`` or the out-of-memory killer):

- forked children kill themselves at a fixed point: in the middle of the second epoch, inside the
  write of the second checkpoint, inside the write of ``adapter.json``;
- one freshly started interpreter is killed from outside once its first checkpoint exists.

The resume runs in this process on a freshly loaded base model. The adapter tensors must equal the
uninterrupted run's (``torch.equal``), and so must the logged per-step losses and learning rates.
Everything runs single-threaded (bitwise equality across processes), on the tiny random models:
``tiny-test`` (ViT, LayerNorm) and, for UEO, a tiny open_clip ModifiedResNet (BatchNorm).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from vlmood.methods import AdapterError, TrainData, fit_method, load_adapter
from vlmood.models import load_model
from vlmood.train import engine
from vlmood.train.engine import CHECKPOINT_NAME, TrainConfig

NAMES = ["car", "cat", "dog"]  # image_folder sorts the class folders
PER_CLASS = 4
N = len(NAMES) * PER_CLASS
EPOCHS = 3
RN_ARCH = "vlmood-rn-bn-test"
RN_CONFIG = {  # open_clip ModifiedResNet (BatchNorm2d) at 32 px with tiny-test's text tower
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8},
    "text_cfg": {
        "context_length": 32,
        "vocab_size": 49408,
        "width": 64,
        "heads": 2,
        "layers": 2,
        "mlp_ratio": 2.0,
    },
}

# name -> (method, model spec, data kind, method params, TrainConfig overrides). Every case trains
# with a step-dependent schedule (warmup + cosine) and an optimiser with state (momentum / Adam), so
# a resume that lost the step counter or the optimiser state would show.
# probes: a ragged last batch (drop_last off) and warmup given as a fraction of all steps
PROBE_TRAIN = {
    "optimizer": "adam",
    "lr": 0.05,
    "batch_size": 5,
    "drop_last": False,
    "warmup_steps": 0,
    "extra": {"warmup_frac": 0.2},
}
CASES = {
    "coop": ("coop", "tiny-test", "image", {"n_ctx": 2}, {}),
    "coop-augment": ("coop", "tiny-test", "images", {"n_ctx": 2, "augment": True}, {}),
    "cocoop": ("cocoop", "tiny-test", "image", {"text_chunk": 2}, {"batch_size": 2}),
    "locoop": ("locoop", "tiny-test", "patch", {"n_ctx": 2, "top_k": 1}, {"optimizer": "adam", "lr": 0.05}),
    "linear-probe": (
        "linear-probe",
        "tiny-test",
        "probe",
        {},
        PROBE_TRAIN,
    ),
    "plp": (
        "plp",
        "tiny-test",
        "plp",
        {},
        PROBE_TRAIN,
    ),
    "ueo": ("ueo", "tiny-test", "images", {}, {"lr": 0.5, "weight_decay": 0.0}),
    "ueo-resnet-bn": ("ueo", f"open_clip:{RN_ARCH}", "images", {}, {"lr": 0.5, "weight_decay": 0.0}),
}
TIME_KEYS = ("time_s", "samples_per_s")


def _cfg(overrides: dict) -> TrainConfig:
    base = dict(
        epochs=EPOCHS,
        batch_size=4,
        lr=0.05,
        optimizer="sgd",
        momentum=0.9,
        weight_decay=5e-4,
        schedule="cosine",
        warmup_steps=2,
        log_every=1,
    )
    base.update(overrides)
    return TrainConfig(**base)


def _steps_per_epoch(cfg: TrainConfig) -> int:
    return N // cfg.batch_size if cfg.drop_last else -(-N // cfg.batch_size)


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    """One thread here and in the children: results must not depend on how a reduction was split."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Shared inputs: feature arrays, a 3 x 4 image folder, the ResNet config registered with open_clip."""
    import open_clip
    from PIL import Image

    from vlmood.data.sources import image_folder

    root = tmp_path_factory.mktemp("resume_world")
    g = torch.Generator().manual_seed(0)
    d = 32  # tiny-test's embedding width
    centers = F.normalize(torch.randn(len(NAMES), d, generator=g), dim=-1)
    labels = torch.arange(len(NAMES)).repeat_interleave(PER_CLASS)
    image = F.normalize(centers[labels] + 0.3 * torch.randn(N, d, generator=g), dim=-1).numpy()
    patch = F.normalize(torch.randn(N, 4, d, generator=g), dim=-1).numpy().astype(np.float16)
    preproj = (
        (torch.randn(len(NAMES), 16, generator=g) * 3)[labels] + torch.randn(N, 16, generator=g)
    ).numpy()
    rng = np.random.default_rng(0)
    for c in NAMES:
        (root / "imgs" / c).mkdir(parents=True)
        for i in range(PER_CLASS):
            arr = rng.integers(0, 255, size=(32, 32, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / "imgs" / c / f"{i}.png")
    cfg_file = root / f"{RN_ARCH}.json"
    cfg_file.write_text(json.dumps(RN_CONFIG))
    open_clip.add_model_config(cfg_file)
    return {
        "root": root,
        "labels": labels.numpy(),
        "image": image,
        "patch": patch,
        "preproj": preproj.astype(np.float32),
        "source": image_folder(root / "imgs"),
    }


def _data(world, kind: str):
    labels, image = world["labels"], world["image"]
    if kind == "image":
        return TrainData(NAMES, labels, {"image": image})
    if kind == "patch":
        return TrainData(NAMES, labels, {"image": image, "patch": world["patch"]})
    if kind == "probe":
        return TrainData(NAMES, labels, {"preproj": world["preproj"], "image": image})
    if kind == "plp":  # PLP trains on pseudo-labels: no ground truth
        return TrainData(NAMES, np.full(N, -1), {"preproj": world["preproj"], "image": image})
    assert kind == "images"
    assert world["source"].classnames == NAMES
    return world["source"]


def _fit(world, case: str, out: Path, resume: bool = False) -> Path:
    method, spec, kind, params, overrides = CASES[case]
    return fit_method(
        method,
        load_model(spec),  # a fresh base model every run (UEO trains the model's own norm layers)
        _data(world, kind),
        out,
        cfg=_cfg(overrides),
        params=params,
        cache_root=out.parent / f"{out.name}-cache",  # shared by a killed run and its resume
        progress=False,
        resume=resume,
    )


@pytest.fixture(scope="module")
def uninterrupted(world):
    """The reference runs, trained once per case (and shared by the tests of this module)."""
    done: dict[str, Path] = {}

    def get(case: str) -> Path:
        if case not in done:
            done[case] = _fit(world, case, world["root"] / "full" / case)
        return done[case]

    return get


# ---------------------------------------------------------------------------------------------- killing
def _sigkill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)  # pragma: no cover - never reached


def _run_killed(target) -> None:
    """Run ``target`` in a forked child that must end by SIGKILL (``target`` installs the kill)."""

    def child():
        torch.set_num_threads(1)
        target()
        os._exit(3)  # the run finished: the kill never came

    p = multiprocessing.get_context("fork").Process(target=child)
    p.start()
    p.join(120)
    if p.exitcode is None:  # pragma: no cover - a hung child
        p.kill()
        p.join()
        pytest.fail("the child training run hung")
    assert p.exitcode == -signal.SIGKILL, f"child ended with {p.exitcode}, not by SIGKILL"


def _kill_at_batch(n: int) -> None:
    """(in the child) SIGKILL when the ``n``-th batch (1-based, over all epochs) reaches the loss."""
    real = engine._LossModule.forward
    seen = [0]

    def hooked(self, batch):
        seen[0] += 1
        if seen[0] == n:
            _sigkill_self()
        return real(self, batch)

    engine._LossModule.forward = hooked


def _kill_inside_checkpoint_write(nth: int) -> None:
    """(in the child) SIGKILL in the middle of writing the ``nth`` checkpoint: half the bytes are on disk."""
    real = torch.save
    calls = [0]

    def hooked(obj, f, *a, **k):
        calls[0] += 1
        if calls[0] != nth:
            return real(obj, f, *a, **k)
        import io

        buf = io.BytesIO()
        real(obj, buf, *a, **k)
        with open(f, "wb") as fh:
            fh.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            fh.flush()
            os.fsync(fh.fileno())
        _sigkill_self()

    torch.save = hooked


def _kill_inside_adapter_json_write() -> None:
    """(in the child) SIGKILL in the middle of writing adapter.json (after adapter.safetensors)."""
    import vlmood.utils as U

    real = U.atomic_write_text

    def hooked(path, text):
        if Path(path).name != "adapter.json":
            return real(path, text)
        with U.atomic_path(path) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text[: len(text) // 2])
                f.flush()
                os.fsync(f.fileno())
            _sigkill_self()

    U.atomic_write_text = hooked


# ---------------------------------------------------------------------------------------------- checks
def _log_rows(out: Path) -> list[dict]:
    rows = [json.loads(x) for x in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIME_KEYS} for r in rows]


def _assert_same_artifact(full: Path, resumed: Path) -> None:
    a = load_file(str(full / "adapter.safetensors"))
    b = load_file(str(resumed / "adapter.safetensors"))
    assert sorted(a) == sorted(b)
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"resumed tensors differ from the uninterrupted run's: {different}"
    # the per-step losses and learning rates of all epochs are the same, with no duplicated rows
    assert _log_rows(resumed) == _log_rows(full)
    ia = json.loads((full / "adapter.json").read_text())
    ib = json.loads((resumed / "adapter.json").read_text())
    # (not weights_sha256 / adapter_key: see test_adapter_key_depends_only_on_the_weights)
    for key in ("train", "params", "classnames", "split_file"):
        assert ia[key] == ib[key], key


def _assert_killed_state(out: Path, epoch: int, steps: int) -> dict:
    """The directory a kill left: the last good checkpoint loads; no adapter.json, so the directory
    is no artifact (``load_adapter`` refuses it)."""
    state = torch.load(out / "train" / CHECKPOINT_NAME, map_location="cpu", weights_only=True)
    assert state["epoch"] == epoch and state["step"] == steps
    assert all(torch.isfinite(v).all() for v in state["params"].values())
    assert not (out / "adapter.json").exists()
    with pytest.raises(AdapterError, match="adapter.json is missing"):
        load_adapter(out, load_model("tiny-test"))
    return state


def _adapter_name(param: str, tensors: dict) -> str:
    """The adapter tensor of an engine parameter (``prompt.ctx`` / ``learner.ctx`` are ``ctx``)."""
    return param if param in tensors else param.split(".", 1)[1]


# ---------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("case", list(CASES))
def test_resume_after_sigkill_mid_epoch_equals_uninterrupted_run(world, uninterrupted, case, tmp_path):
    full = uninterrupted(case)
    steps = _steps_per_epoch(_cfg(CASES[case][4]))
    out = tmp_path / "killed"

    def train_and_die():
        _kill_at_batch(steps + 2)  # one optimiser step into the second epoch
        _fit(world, case, out)

    _run_killed(train_and_die)
    state = _assert_killed_state(out, epoch=1, steps=steps)
    assert [p.name for p in out.iterdir()] == ["train"]  # no adapter file, finished or partial

    _fit(world, case, out, resume=True)
    _assert_same_artifact(full, out)
    # epochs 2 and 3 really ran after the resume: the final tensors moved away from the checkpoint's
    final = load_file(str(out / "adapter.safetensors"))
    moved = [
        n for n, v in state["params"].items() if not torch.equal(v.float(), final[_adapter_name(n, final)])
    ]
    assert moved


@pytest.mark.parametrize("case", ["coop", "ueo"])
def test_kill_inside_checkpoint_write_keeps_previous_checkpoint(world, uninterrupted, case, tmp_path):
    full = uninterrupted(case)
    steps = _steps_per_epoch(_cfg(CASES[case][4]))
    out = tmp_path / "killed"

    def train_and_die():
        _kill_inside_checkpoint_write(nth=2)  # the end-of-epoch-2 checkpoint
        _fit(world, case, out)

    _run_killed(train_and_die)
    # last.pt is still the complete epoch-1 checkpoint; the cut-off write is a stray temp file
    _assert_killed_state(out, epoch=1, steps=steps)
    stray = [p for p in (out / "train").iterdir() if p.name.startswith(f".{CHECKPOINT_NAME}.")]
    assert len(stray) == 1
    with pytest.raises(Exception):  # noqa: B017 - any unpickling error: the bytes are cut in half
        torch.load(stray[0], weights_only=True)

    _fit(world, case, out, resume=True)
    _assert_same_artifact(full, out)


def test_kill_inside_adapter_json_write_leaves_no_artifact_and_resume_completes_it(
    world, uninterrupted, tmp_path
):
    full = uninterrupted("cocoop")
    steps = _steps_per_epoch(_cfg(CASES["cocoop"][4]))
    out = tmp_path / "killed"

    def train_and_die():
        _kill_inside_adapter_json_write()
        _fit(world, "cocoop", out)

    _run_killed(train_and_die)
    # training finished (final checkpoint) and the weights file is there, but without adapter.json
    # the directory is not an artifact: nothing can load the half-written one
    _assert_killed_state(out, epoch=EPOCHS, steps=EPOCHS * steps)
    assert (out / "adapter.safetensors").exists()
    assert [p.name for p in out.iterdir() if p.name.startswith(".adapter.json.")]  # the cut-off temp file

    _fit(world, "cocoop", out, resume=True)  # nothing left to train: the artifact is written
    _assert_same_artifact(full, out)
    assert load_adapter(out, load_model("tiny-test")).kind == "conditional"


CHILD_SCRIPT = """
import json, sys, time
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(1)
from vlmood.methods import TrainData, fit_method
from vlmood.models import load_model
from vlmood.train import engine
from vlmood.train.engine import TrainConfig

out, arrays, names, cfg, params, stalled = sys.argv[1:]
real = engine.Trainer.save_checkpoint


def stall(self):
    real(self)
    Path(stalled).touch()
    time.sleep(300)  # past the first checkpoint: wait here for the kill


engine.Trainer.save_checkpoint = stall
a = np.load(arrays)
data = TrainData(json.loads(names), a["labels"], {"image": a["image"]})
fit_method("coop", load_model("tiny-test"), data, out, cfg=TrainConfig(**json.loads(cfg)),
           params=json.loads(params), progress=False)
sys.exit(3)
"""


def test_fresh_process_killed_from_outside_then_resumed(world, uninterrupted, tmp_path):
    """``python script.py`` trains CoOp; this process polls for its first checkpoint and sends
    SIGKILL (the child waits in its second epoch, so the kill lands there whatever the timing)."""
    full = uninterrupted("coop")
    method, spec, kind, params, overrides = CASES["coop"]
    cfg = _cfg(overrides)
    out = tmp_path / "killed"
    script = tmp_path / "train_child.py"
    script.write_text(textwrap.dedent(CHILD_SCRIPT))
    np.savez(tmp_path / "arrays.npz", labels=world["labels"], image=world["image"])
    cfg_json = json.dumps(cfg.__dict__)
    stalled = tmp_path / "stalled"
    args = [sys.executable, str(script), str(out), str(tmp_path / "arrays.npz"), json.dumps(NAMES)]
    args += [cfg_json, json.dumps(params), str(stalled)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with open(tmp_path / "child.log", "wb") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + 120
            ckpt = out / "train" / CHECKPOINT_NAME
            while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            alive = proc.poll() is None
            if alive:
                proc.send_signal(signal.SIGKILL)
            rc = proc.wait(30)
        finally:
            if proc.poll() is None:  # pragma: no cover
                proc.kill()
                proc.wait()
    assert alive and rc == -signal.SIGKILL, (tmp_path / "child.log").read_text()[-3000:]
    _assert_killed_state(out, epoch=1, steps=_steps_per_epoch(cfg))

    fit_method(
        method,
        load_model(spec),
        _data(world, kind),
        out,
        cfg=cfg,
        params=params,
        progress=False,
        resume=True,
    )
    _assert_same_artifact(full, out)


# ---------------------------------------------------------------------------------------------- fixed bugs
def test_resumed_adapter_metrics_cover_the_whole_run(world, uninterrupted, tmp_path):
    full = uninterrupted("coop")
    steps = _steps_per_epoch(_cfg(CASES["coop"][4]))
    out = tmp_path / "killed"

    def train_and_die():
        _kill_at_batch(steps + 2)
        _fit(world, "coop", out)

    _run_killed(train_and_die)
    _fit(world, "coop", out, resume=True)
    a = json.loads((full / "adapter.json").read_text())["metrics"]
    b = json.loads((out / "adapter.json").read_text())["metrics"]
    assert a["epochs"] == EPOCHS
    assert (b["epochs"], b["first"], b["last"]) == (a["epochs"], a["first"], a["last"])


def test_adapter_key_depends_only_on_the_weights(tmp_path):
    from vlmood.methods import create_method, save_adapter
    from vlmood.methods.probe import ProbeHead

    model = load_model("tiny-test")
    method = create_method("linear-probe")
    torch.manual_seed(0)
    method.head = ProbeHead(4, 3)
    keys = set()
    for i in range(24):  # all 24 equal by chance: probability 2 * 2**-24
        save_adapter(tmp_path / str(i), method, model, None, NAMES)
        info = json.loads((tmp_path / str(i) / "adapter.json").read_text())
        keys.add((info["tensors_sha256"], info["adapter_key"]))
        # the file's header order varies, so its own sha only guards integrity
        assert (
            info["weights_sha256"]
            == hashlib.sha256((tmp_path / str(i) / "adapter.safetensors").read_bytes()).hexdigest()
        )
    assert len(keys) == 1
    # a changed weights file is refused
    p = tmp_path / "0" / "adapter.safetensors"
    blob = bytearray(p.read_bytes())
    blob[-1] ^= 1
    p.write_bytes(bytes(blob))
    with pytest.raises(AdapterError, match="does not match the sha256"):
        load_adapter(tmp_path / "0", model)


def test_adapter_files_get_normal_permissions(tmp_path):
    from vlmood.methods import create_method, save_adapter
    from vlmood.methods.probe import ProbeHead

    method = create_method("linear-probe")
    method.head = ProbeHead(4, 3)
    save_adapter(tmp_path, method, load_model("tiny-test"), None, NAMES)
    umask = os.umask(0)
    os.umask(umask)
    want = 0o666 & ~umask
    assert (tmp_path / "adapter.json").stat().st_mode & 0o777 == want
    assert (tmp_path / "adapter.safetensors").stat().st_mode & 0o777 == want
