"""`vlmood attack`: PLP's feature-space OOD manipulation (objective by hand, constraints,
determinism, the written dataset, resume, sharding, the evaluation table and bad input)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vlmood.attacks.feature import (
    AttackConfig,
    attack_batch,
    image_gradients,
    init_delta,
    objective,
    project,
    smoothness,
)
from vlmood.cli import main
from vlmood.data.example import write_example
from vlmood.errors import UsageError


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    torch.set_num_threads(1)
    return write_example(tmp_path_factory.mktemp("ex") / "data", per_class=4, size=32)


@pytest.fixture(scope="module")
def tiny():
    from vlmood.models import load_model

    return load_model("tiny-test", device="cpu")


@pytest.fixture(scope="module")
def sets(example):
    from vlmood.api import load_benchmark

    return load_benchmark(str(example))


# ----------------------------------------------------------------------------- the objective
def test_image_gradients_and_smoothness_by_hand():
    d = torch.tensor([[[[1.0, 2.0, 4.0], [0.0, -1.0, 3.0]]]])  # [1, 1, 2, 3]
    dy, dx = image_gradients(d)
    # forward differences, the last row / column zero (torchmetrics' image_gradients)
    assert dy.tolist() == [[[[-1.0, -3.0, -1.0], [0.0, 0.0, 0.0]]]]
    assert dx.tolist() == [[[[1.0, 2.0, 0.0], [-1.0, 4.0, 0.0]]]]
    # mean over all 6 positions: (1 + 9 + 1) / 6 + (1 + 4 + 1 + 16) / 6
    assert smoothness(d).item() == pytest.approx(11 / 6 + 22 / 6)


def test_objective_by_hand():
    feats = torch.tensor([[1.0, 0.0], [3.0, 4.0]])
    target = torch.tensor([[0.0, 2.0], [3.0, 4.0]])
    delta = torch.zeros(2, 1, 2, 3)
    delta[0, 0, 0, 0] = 0.5  # dy: -0.5 at (0,0); dx: -0.5 at (0,0)... (1 position each)
    got = objective(feats, target, delta, smooth=10.0)
    # sample 0: cos = 0; smoothness = 0.25/6 + 0.25/6 ; sample 1: cos = 1, smoothness 0
    assert got[0].item() == pytest.approx(-0.0 + 10.0 * (0.25 / 6 + 0.25 / 6))
    assert got[1].item() == pytest.approx(-1.0)
    assert objective(feats, target, delta, smooth=0.0)[0].item() == pytest.approx(0.0)


def test_config_refuses_bad_values():
    for kw, word in [
        ({"steps": 0}, "steps"),
        ({"epsilon": 0.0}, "epsilon"),
        ({"epsilon": -0.1}, "epsilon"),
        ({"epsilon": 2.0}, "epsilon"),
        ({"lr": 0.0}, "lr"),
        ({"smooth": -1.0}, "smooth"),
        ({"batch_size": 0}, "batch_size"),
        ({"feature": "patch"}, "feature"),
    ]:
        with pytest.raises(UsageError, match=word):
            AttackConfig(**kw)
    assert AttackConfig().kind == "smooth" and AttackConfig(smooth=0).kind == "patchy"
    assert AttackConfig().epsilon is None  # PLP has no budget


def _linear_encoder(seed=0, dim=6):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(3 * 4 * 4, dim, generator=g)

    def encode(x):
        return torch.tanh(x.flatten(1) @ w)

    return encode


def test_clamping_keeps_pixels_in_unit_range_and_epsilon_holds():
    encode = _linear_encoder()
    y = torch.zeros(4, 3, 4, 4)
    y[:, :, ::2] = 1.0  # pixels at both ends of the range
    target = torch.randn(4, 6)
    cfg = AttackConfig(steps=20, lr=0.3, smooth=0.0, init_std=0.5)
    delta = attack_batch(encode, y, target, [0, 1, 2, 3], cfg)
    adv = y + delta
    assert adv.min() >= 0.0 and adv.max() <= 1.0
    assert delta.abs().max() > 0.2  # it moved far enough for the clamp to matter
    eps = 0.03
    delta = attack_batch(
        encode, y + 0.5 * (0.5 - y), target, [0, 1, 2, 3], AttackConfig(steps=20, lr=0.3, epsilon=eps)
    )
    assert delta.abs().max() <= eps + 1e-7
    assert delta.abs().max() > eps - 1e-3  # the budget binds
    # project() itself: the budget survives the range clamp
    d = project(torch.full((1, 3, 4, 4), 0.9), torch.full((1, 3, 4, 4), 0.5), 0.2)
    assert torch.allclose(d, torch.full_like(d, 0.2))


def test_init_is_per_position_and_a_sample_does_not_depend_on_its_batch():
    cfg = AttackConfig(steps=5, lr=0.05, smooth=10.0)
    a = init_delta([3, 7], (3, 4, 4), cfg)
    b = init_delta([7], (3, 4, 4), cfg)
    assert torch.equal(a[1], b[0]) and not torch.equal(a[0], a[1])
    assert a.std().item() == pytest.approx(1e-3, rel=0.3)
    encode = _linear_encoder()
    y = torch.rand(3, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    target = torch.randn(3, 6, generator=torch.Generator().manual_seed(2))
    together = attack_batch(encode, y, target, [0, 1, 2], cfg)
    alone = torch.cat([attack_batch(encode, y[i : i + 1], target[i : i + 1], [i], cfg) for i in range(3)])
    assert torch.allclose(together, alone, atol=1e-6)


def test_a_few_steps_raise_the_cosine_on_a_real_model(tiny, sets):
    from vlmood.attacks.run import feature_encoder, load_pixels, pixel_pipeline

    pipe = pixel_pipeline(tiny)
    encode = feature_encoder(tiny, pipe, "preproj")
    y = load_pixels(pipe, [s.path for s in sets.ood[0].source.samples[:3]])
    x = load_pixels(pipe, [s.path for s in sets.train.samples[:3]])
    with torch.no_grad():
        target = encode(x)
        before = torch.nn.functional.cosine_similarity(encode(y), target)
    delta = attack_batch(encode, y, target, [0, 1, 2], AttackConfig(steps=15, lr=1e-2, smooth=0.0))
    with torch.no_grad():
        after = torch.nn.functional.cosine_similarity(encode(y + delta), target)
    # (a random tiny model's features are all close: the gap to 1 must shrink by more than half)
    assert ((1 - after) < 0.5 * (1 - before)).all(), (before, after)


def test_pixel_pipeline_matches_the_model_preprocessing(tiny, sets):
    from vlmood.attacks.run import pixel_pipeline
    from vlmood.data.sources import open_image

    pipe = pixel_pipeline(tiny)
    img = open_image(sets.id.samples[0].path)
    px = pipe.to_pixels(img)
    assert px.min() >= 0 and px.max() <= 1
    assert torch.allclose(pipe.normalize(px[None])[0], tiny.preprocess(img), atol=1e-6)


# ----------------------------------------------------------------------------- the dataset
def _run(tiny, sets, out, **kw):
    from vlmood.attacks.run import run_attack

    cfg = AttackConfig(**{"steps": 4, "lr": 1e-2, "batch_size": 3, **kw.pop("cfg", {})})
    ood = [(o.name, o.source) for o in sets.ood]
    return run_attack(tiny, ood, sets.train, out, cfg, classnames=sets.classnames, progress=False, **kw)


def _manifest(out: Path) -> list[dict[str, str]]:
    with open(out / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_written_dataset_reloads_with_the_same_pixels(tiny, sets, tmp_path):
    from vlmood.attacks.run import feature_encoder, load_pixels, manipulated_source, pixel_pipeline

    out = tmp_path / "att"
    meta = _run(tiny, sets, out, limit=5)
    assert meta["status"] == "complete" and meta["n_images"] == 5 and meta["n_batches"] == 2
    rows = _manifest(out)
    assert [r["path"] for r in rows] == [f"images/{i:06d}.png" for i in range(5)]
    pipe = pixel_pipeline(tiny)
    encode = feature_encoder(tiny, pipe, "preproj")
    size = tiny.identity.preprocess.image_size
    for r in rows:
        png = Image.open(out / r["path"])
        assert png.format == "PNG" and png.mode == "RGB" and png.size == (size, size)
        arr = np.asarray(png)
        # read through the model's own preprocessing (what every other command does): same pixels
        px = load_pixels(pipe, [str(out / r["path"])])
        assert np.array_equal((px[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), arr)
        src = load_pixels(pipe, [r["source"]])
        # the manifest's l-inf and cosine are those of the written 8-bit pixels
        assert float(r["linf"]) == pytest.approx((px - src).abs().max().item(), abs=1e-5)
        with torch.no_grad():
            tgt = encode(load_pixels(pipe, [r["target"]]))
            cos = torch.nn.functional.cosine_similarity(encode(px), tgt).item()
        assert float(r["cos_after"]) == pytest.approx(cos, abs=1e-5)
        assert r["label"] == "-1" and r["target_class"] == sets.classnames[int(r["target_label"])]
        assert r["source_set"] in {o.name for o in sets.ood}
    # targets come from the ID training set, chosen by seed
    train = {s.path for s in sets.train.samples}
    assert all(r["target"] in train for r in rows)
    src = manipulated_source(out)
    assert len(src) == 5 and all(Path(s.path).is_file() for s in src.samples)
    # a different seed picks other images/targets
    other = _run(tiny, sets, tmp_path / "att-seed1", limit=5, cfg={"seed": 1})
    assert other["identity"]["targets"] != meta["identity"]["targets"]


def test_resume_after_a_stop_gives_the_same_dataset_and_other_inputs_are_refused(tiny, sets, tmp_path):
    ref = tmp_path / "ref"
    _run(tiny, sets, ref, limit=7)
    out = tmp_path / "killed"
    meta = _run(tiny, sets, out, limit=7, stop_after=1)
    assert meta["status"] == "incomplete" and meta["missing_batches"] == 2
    assert not (out / "manifest.csv").exists()
    assert json.loads((out / "attack.json").read_text())["status"] == "incomplete"
    # a half-written batch (image written, no part file) is redone
    (out / "images" / "000003.png").write_bytes(b"broken")
    meta = _run(tiny, sets, out, limit=7)
    assert meta["status"] == "complete"
    assert (out / "manifest.csv").read_text() == (ref / "manifest.csv").read_text()
    for r in _manifest(ref):
        assert np.array_equal(
            np.asarray(Image.open(ref / r["path"])), np.asarray(Image.open(out / r["path"]))
        )
    # the same folder with other settings: refused, nothing touched
    with pytest.raises(UsageError, match="other inputs.*config"):
        _run(tiny, sets, out, limit=7, cfg={"steps": 5})
    # a folder with unrelated files: refused
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match=r"holds files that are not an attack.s \(notes.txt\)"):
        _run(tiny, sets, tmp_path / "busy", limit=2)


def test_sharded_ranks_write_the_same_dataset(tiny, sets, tmp_path):
    ref = tmp_path / "ref"
    _run(tiny, sets, ref, limit=7)
    out = tmp_path / "sharded"
    # (in order, as the barriers of a torchrun run order them: rank 0 opens the folder first)
    assert _run(tiny, sets, out, limit=7, rank=0, world=2, stop_after=0)["status"] == "incomplete"
    m1 = _run(tiny, sets, out, limit=7, rank=1, world=2)  # batch 1 only
    assert sorted(p.name for p in (out / "parts").iterdir()) == ["batch-00001.csv"]
    assert m1["status"] == "running"
    m0 = _run(tiny, sets, out, limit=7, rank=0, world=2)  # batches 0 and 2, then the manifest
    assert m0["status"] == "complete"
    assert (out / "manifest.csv").read_text() == (ref / "manifest.csv").read_text()


def test_cli_kill_then_resume(example, tmp_path):
    """SIGKILL the command after its first batch; the rerun completes with the same dataset."""
    env = {**os.environ, "VLMOOD_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    args = [
        sys.executable, "-m", "vlmood.cli", "attack", "--model", "tiny-test", "--benchmark", str(example),
        "--steps", "60", "--lr", "0.01", "--attack-batch", "2", "--limit", "6", "--no-eval",
        "--no-progress", "--device", "cpu",
    ]  # fmt: skip
    ref = tmp_path / "ref"
    subprocess.run([*args, "--out", str(ref)], check=True, env=env, capture_output=True)
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [*args, "--out", str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "parts" / "batch-00000.csv").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / "parts" / "batch-00000.csv").exists()
    assert not (out / "manifest.csv").exists()
    done = subprocess.run([*args, "--out", str(out)], check=True, env=env, capture_output=True, text=True)
    assert "attacked 6 images" in done.stdout
    assert (out / "manifest.csv").read_text() == (ref / "manifest.csv").read_text()


# ----------------------------------------------------------------------------- CLI + evaluation
def test_cli_attack_and_evaluation_table(example, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("VLMOOD_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "att"
    common = ["--model", "tiny-test", "--benchmark", str(example), "--no-progress", "--workers", "0"]
    rc = main(
        ["attack", *common, "--steps", "3", "--limit", "4", "--scores", "knn,mcm,energy", "--out", str(out)]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "knn (bank without targets)" in text and "AUROC manip" in text
    res = json.loads((out / "attack_results.json").read_text())
    scores = {(r["run"], r["score"]) for r in res["rows"]}
    assert scores == {
        ("zero-shot", "knn"),
        ("zero-shot", "mcm"),
        ("zero-shot", "energy"),
        ("knn-without-targets", "knn (bank without targets)"),
    }
    for r in res["rows"]:
        assert 0 <= r["auroc_original"] <= 1 and r["auroc_drop"] == pytest.approx(
            r["auroc_original"] - r["auroc_manipulated"]
        )
    # the bank without targets really lacks them
    sub = json.loads((out / "eval" / "knn-without-targets" / "results.json").read_text())
    full = json.loads((out / "eval" / "zero-shot" / "results.json").read_text())
    n_targets = len({r["target"] for r in _manifest(out)})
    assert sub["datasets"]["train"]["n"] == full["datasets"]["train"]["n"] - n_targets
    # the report: the side-by-side table and the example triplets, then the evaluation runs
    rep = tmp_path / "report"
    assert main(["report", str(out), "--out", str(rep)]) == 0
    page = (rep / "index.html").read_text()
    assert "Attack: att (smooth)" in page and "manipulated" in page
    assert (rep / "figures" / "attack1-triplets.png").stat().st_size > 1000
    assert "knn (bank without targets)" in (rep / "report.md").read_text()
    # a rerun resumes: nothing to attack, the evaluations are reused
    assert (
        main(
            [
                "attack",
                *common,
                "--steps",
                "3",
                "--limit",
                "4",
                "--scores",
                "knn,mcm,energy",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    # the manipulated images are a dataset for every other command
    ev = tmp_path / "ev"
    rc = main(
        ["eval", *common, "--ood", f"manip=csv:{out / 'manifest.csv'}", "--scores", "mcm", "--out", str(ev)]
    )
    assert rc == 0
    got = json.loads((ev / "results.json").read_text())
    assert got["scores"]["mcm"]["per_set"]["manip"]["auroc"] == pytest.approx(
        full["scores"]["mcm"]["per_set"]["manipulated"]["auroc"]
    )


def test_cli_attack_with_a_probe_adapter(example, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("VLMOOD_CACHE", str(tmp_path / "cache"))
    common = ["--model", "tiny-test", "--benchmark", str(example), "--no-progress", "--workers", "0"]
    ad = tmp_path / "plp"
    assert main(["fit", "plp", *common, "--set", "epochs=2", "--out", str(ad)]) == 0
    out = tmp_path / "att"
    rc = main(
        [
            "attack",
            *common,
            "--steps",
            "2",
            "--limit",
            "3",
            "--scores",
            "mcm",
            "--adapter",
            str(ad),
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    res = json.loads((out / "attack_results.json").read_text())
    assert {r["score"] for r in res["rows"] if r["run"] == "adapter"} == {"msp", "energy", "maxlogit"}
    assert "adapter: msp" in capsys.readouterr().out


def test_cli_bad_input(example, tmp_path, capsys):
    base = ["attack", "--model", "tiny-test", "--no-progress", "--out", str(tmp_path / "o")]

    def err(*args) -> str:
        with pytest.raises(SystemExit) as e:
            main([*base, *args])
        assert e.value.code == 2
        return capsys.readouterr().err

    def refused(*args) -> str:
        assert main([*base, *args]) == 2
        e = capsys.readouterr().err
        assert "Traceback" not in e and len(e.strip().splitlines()) == 1, e
        return e

    assert "--epsilon" in err("--benchmark", str(example), "--epsilon", "0")
    assert "--epsilon" in err("--benchmark", str(example), "--epsilon", "-0.1")
    assert "--steps" in err("--benchmark", str(example), "--steps", "0")
    # an ID set without a train split
    root = example.parent
    msg = refused(
        "--id", str(root / "id"), "--classnames", str(root / "classnames.txt"),
        "--ood", f"x=flat:{root / 'near' / 'digits-5-9'}",
    )  # fmt: skip
    assert "no train split" in msg and "--train" in msg
    assert "epsilon" in refused("--benchmark", str(example), "--epsilon", "1.5")
    assert "nope" in refused("--benchmark", str(example), "--scores", "nope")
    assert not (tmp_path / "o").exists()


def test_identity_follows_content_not_mtimes(tiny, sets, tmp_path):
    """The data at the same paths with new mtimes (a copy on another machine) resumes; an
    edited source image is another input."""
    import shutil

    from vlmood.api import load_benchmark

    data = tmp_path / "data"
    shutil.copytree(Path(sets.id.samples[0].path).parents[2], data, copy_function=shutil.copy)
    bench = load_benchmark(str(data / "example.yaml"))
    out = tmp_path / "att"
    _run(tiny, bench, out, limit=3)
    for p in data.rglob("*.png"):
        os.utime(p, (1e9, 1e9))
    assert _run(tiny, bench, out, limit=3)["status"] == "complete"  # same content: reused
    first = json.loads((out / "attack.json").read_text())["identity"]
    src = Path(_manifest(out)[0]["source"])
    Image.new("RGB", (32, 32), (9, 9, 9)).save(src)
    with pytest.raises(UsageError, match="content"):
        _run(tiny, bench, out, limit=3)
    assert first["content"]


def test_eval_only_and_transfer(example, tmp_path, capsys, monkeypatch, fake_model):
    from vlmood.attacks.evaluate import evaluate_attack
    from vlmood.eval.runner import EvalOptions, ScoreSpec

    monkeypatch.setenv("VLMOOD_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "att"
    common = ["--model", "tiny-test", "--benchmark", str(example), "--no-progress", "--workers", "0"]
    # nothing there yet / an unfinished attack: refused before any model loads
    assert main(["attack", *common, "--eval-only", "--out", str(out)]) == 2
    assert "no attack.json" in capsys.readouterr().err
    assert main(["attack", *common, "--steps", "2", "--limit", "3", "--no-eval", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["attack", *common, "--eval-only", "--no-eval", "--out", str(out)]) == 2
    # evaluated later, with no attack settings given
    assert main(["attack", *common, "--eval-only", "--scores", "mcm", "--out", str(out)]) == 0
    res = json.loads((out / "attack_results.json").read_text())
    assert res["transfer"] is False and {r["score"] for r in res["rows"]} == {"mcm"}
    # another model measures how the attack transfers
    from vlmood.api import load_benchmark

    es = load_benchmark(str(example)).eval_sets
    opts = EvalOptions(["a photo of a {}."], progress=False, num_workers=0, cache_dir=str(tmp_path / "c2"))
    res = evaluate_attack(fake_model, es, out, [ScoreSpec("mcm")], opts)
    assert res["transfer"] is True and res["rows"][0]["score"] == "mcm"


@pytest.mark.dist
def test_two_process_torchrun_attack_equals_one_process(example, tmp_path):
    """Under torchrun (2 CPU processes, gloo) the batches are dealt to the ranks; rank 0 writes the
    manifest, and the dataset equals a one-process run's."""
    from conftest import torchrun, torchrun_env

    env = torchrun_env(tmp_path / "cache")
    args = [
        "attack", "--model", "tiny-test", "--benchmark", str(example), "--steps", "3",
        "--attack-batch", "2", "--limit", "7", "--scores", "mcm,knn", "--no-progress", "--device", "cpu",
        "--workers", "0",
    ]  # fmt: skip
    one = tmp_path / "one"
    subprocess.run(
        [sys.executable, "-m", "vlmood.cli", *args, "--out", str(one)],
        check=True,
        env=env,
        capture_output=True,
    )
    two = tmp_path / "two"
    res = torchrun(["-m", "vlmood.cli", *args, "--out", str(two)], cache=tmp_path / "cache", timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert res.stdout.count("AUROC manip") == 1  # every rank evaluates, rank 0 alone reports
    assert (two / "manifest.csv").read_text() == (one / "manifest.csv").read_text()
    assert len(list((two / "parts").iterdir())) == 4
    r1 = json.loads((one / "attack_results.json").read_text())["rows"]
    r2 = json.loads((two / "attack_results.json").read_text())["rows"]
    assert [r["score"] for r in r2] == [r["score"] for r in r1]
    for a, b in zip(r1, r2):
        assert b["auroc_manipulated"] == pytest.approx(a["auroc_manipulated"], abs=1e-6)


def test_python_api(example, tmp_path, monkeypatch):
    import vlmood

    monkeypatch.setenv("VLMOOD_CACHE", str(tmp_path / "cache"))
    model = vlmood.load_model("tiny-test")
    bench = vlmood.load_benchmark(str(example))
    att = vlmood.attack(
        model,
        bench,
        out=tmp_path / "a",
        preset="patchy",
        steps=3,
        limit=4,
        scores=["mcm", "knn"],
        progress=False,
    )
    assert att.meta["kind"] == "patchy" and att.meta["config"]["smooth"] == 0.0
    t = att.table()
    assert list(t["score"]) == ["mcm", "knn", "knn (bank without targets)"]
    assert len(att.dataset) == 4 and len(att.manifest()) == 4
    again = vlmood.AttackResult.load(tmp_path / "a")
    assert again.table().equals(t) and "4 images" in repr(again)
    with pytest.raises(UsageError, match="preset"):
        vlmood.attack(model, bench, out=tmp_path / "b", preset="wavy")
    with pytest.raises(UsageError, match="epsilon"):
        vlmood.attack(model, bench, out=tmp_path / "b", epsilon=0)
    with pytest.raises(UsageError, match="steps"):
        vlmood.attack(model, bench, out=tmp_path / "b", steps=0)
    nontrain = vlmood.load_benchmark(str(example), sets="digits-5-9")
    with pytest.raises(UsageError, match="no train split"):
        vlmood.attack(model, nontrain, out=tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_review_fixes(example, tmp_path, capsys, monkeypatch, tiny, sets):
    """The written 8-bit pixels keep the epsilon budget; a finished attack rerun with another
    batch size is not redone; KNN without targets refuses a bank that lacks the targets; a
    negative seed is refused by name."""
    import shutil

    monkeypatch.setenv("VLMOOD_CACHE", str(tmp_path / "cache"))
    eps = 0.01
    meta = _run(tiny, sets, tmp_path / "eps", limit=3, cfg={"epsilon": eps, "lr": 0.05, "smooth": 0.0})
    assert 0 < meta["summary"]["linf_max"] <= eps + 1e-6
    assert all(float(r["linf"]) <= eps + 1e-6 for r in _manifest(tmp_path / "eps"))

    out = tmp_path / "att"
    common = ["--model", "tiny-test", "--benchmark", str(example), "--no-progress", "--workers", "0"]
    assert main(["attack", *common, "--steps", "2", "--limit", "4", "--no-eval", "--out", str(out)]) == 0
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "images").iterdir()}
    assert (
        main(
            [
                "attack",
                *common,
                "--steps",
                "2",
                "--limit",
                "4",
                "--no-eval",
                "--attack-batch",
                "3",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert {p.name: p.stat().st_mtime_ns for p in (out / "images").iterdir()} == stamps
    capsys.readouterr()

    other = tmp_path / "copy"
    shutil.copytree(example.parent, other)
    rc = main(["attack", "--model", "tiny-test", "--benchmark", str(other / example.name), "--no-progress",
               "--workers", "0", "--eval-only", "--scores", "knn", "--out", str(out)])  # fmt: skip
    assert rc == 2 and "holds 0 of the attack's" in capsys.readouterr().err

    with pytest.raises(UsageError, match="seed"):
        AttackConfig(seed=-1)
    with pytest.raises(SystemExit) as e:
        main(["attack", *common, "--seed", "-1", "--out", str(tmp_path / "s")])
    assert e.value.code == 2 and "--seed: must be >= 0" in capsys.readouterr().err
