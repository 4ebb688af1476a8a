"""`vlmood study`: zero-shot and adaptation methods x scores in one table, resumable, strict about
changed settings. Tiny random model on the sklearn-digits example benchmark."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vlmood.cli import main
from vlmood.data.example import write_example


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    torch.set_num_threads(1)
    return write_example(tmp_path_factory.mktemp("ex") / "data", per_class=4, size=32)


def _study(example, out, *extra):
    return main(
        [
            "study",
            "--model",
            "tiny-test",
            "--benchmark",
            str(example),
            "--methods",
            "zero-shot,coop,plp",
            "--seeds",
            "0,1",
            "--shots",
            "2",
            "--set",
            "epochs=2",
            "--set",
            "batch_size=4",
            "--param",
            "coop:n_ctx=2",
            "--scores",
            "mcm,energy,l1",
            "--score",
            "neglabel:ngroup=2,max_negatives=100",
            "--out",
            str(out),
            "--workers",
            "0",
            "--no-progress",
            *extra,
        ]
    )


def test_study_table_resume_and_changed_settings(example, tmp_path, capsys, monkeypatch):
    from safetensors.torch import load_file

    monkeypatch.setenv("VLMOOD_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "study"
    assert _study(example, out) == 0
    text = capsys.readouterr().out
    assert "| zero-shot | mcm |" in text and "| coop | energy |" in text and "| plp | l1 |" in text
    study = json.loads((out / "study.json").read_text())
    table = study["table"]
    assert set(table) == {"zero-shot", "coop", "plp"}
    # per seed: one adapter and one evaluation; aggregates are mean and sample std over them
    accs = []
    for seed in ("0", "1"):
        res = json.loads((out / study["runs"]["coop"]["seeds"][seed]["results"]).read_text())
        assert res["adapter"]["method"] == "coop" and res["adapter"]["train"]["seed"] == int(seed)
        accs.append(res["id_accuracy"])
        # NegLabel: the zero-shot run's mined negatives, the adapter's class features as ID side
        neg = res["scores"]["neglabel(max_negatives=100,ngroup=2)"]
        assert "runs/zero-shot/artifacts/neglabel_" in neg["params"]["labels_file"]
        assert neg["artifacts"]["neglabel_id_encoding"] == "ctx.text_features"
    assert table["coop"]["id_accuracy"]["mean"] == pytest.approx(np.mean(accs))
    assert table["coop"]["id_accuracy"]["std"] == pytest.approx(np.std(accs, ddof=1))
    assert table["coop"]["scores"]["energy"]["near_auroc"]["n"] == 2
    # a probe has no NegLabel: n/a with the reason; PLP trains on the whole split (no shots)
    assert "a probe gives logits" in table["plp"]["scores"]["neglabel(max_negatives=100,ngroup=2)"]["n/a"]
    plp_info = json.loads((out / "adapters" / "plp" / "seed0" / "adapter.json").read_text())
    assert plp_info["data"]["shots"] is None and plp_info["split_file"] is None
    assert (out / "adapters" / "coop" / "seed1" / "split.json").is_file()
    assert "n/a" in (out / "study.md").read_text()

    # a rerun reuses every piece (nothing retrained or re-evaluated)
    stamps = {
        p: p.stat().st_mtime_ns for p in out.rglob("*.json") if p.name in ("adapter.json", "results.json")
    }
    assert _study(example, out) == 0
    capsys.readouterr()
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())

    # an interrupted training (checkpoint, no adapter yet) resumes to the same adapter
    ad = out / "adapters" / "coop" / "seed1"
    want = load_file(str(ad / "adapter.safetensors"))
    (ad / "adapter.json").unlink()
    (ad / "adapter.safetensors").unlink()
    assert _study(example, out) == 0
    capsys.readouterr()
    got = load_file(str(ad / "adapter.safetensors"))
    assert all(torch.equal(got[k], want[k]) for k in want)

    # changed settings are refused, naming what differs
    assert _study(example, out, "--set", "coop:epochs=3") == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "train.epochs" in err
    # settings that do not change what is computed are not a reason to refuse or redo anything
    stamps = {
        p: p.stat().st_mtime_ns for p in out.rglob("*.json") if p.name in ("adapter.json", "results.json")
    }
    assert _study(example, out, "--set", "log_every=3") == 0, capsys.readouterr().err
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    # other templates: the adapters stay, every evaluation is redone
    assert _study(example, out, "--templates", "imagenet7") == 0, capsys.readouterr().err
    res = json.loads((out / "runs" / "zero-shot" / "results.json").read_text())
    assert res["templates"]["origin"] == "imagenet7"
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items() if p.name == "adapter.json") and all(
        p.stat().st_mtime_ns != t for p, t in stamps.items() if p.name == "results.json"
    )


def test_study_bad_input(example, tmp_path, capsys):
    def run(*args):
        rc = main(
            ["study", "--model", "tiny-test", "--benchmark", str(example), "--out", str(tmp_path), *args]
        )
        return rc, capsys.readouterr().err

    rc, err = run("--methods", "zero-shot,nope")
    assert rc == 2 and "unknown method(s) ['nope']" in err
    # a bad hyperparameter fails before the (long) zero-shot evaluation runs
    rc, err = run("--methods", "zero-shot,coop", "--param", "coop:nctx=2")
    assert rc == 2 and "unknown parameter(s) ['nctx']" in err
    assert not (tmp_path / "runs").exists()
    rc, err = run("--methods", "coop", "--param", "plp:feature=image")
    assert rc == 2 and "not among the study's methods" in err
    rc, err = run("--methods", "coop", "--param", "n_ctx=2")
    assert rc == 2 and "METHOD:KEY=VALUE" in err
    rc, err = run("--methods", "coop", "--set", "epoch=2")
    assert rc == 2 and "unknown training setting(s) ['epoch']" in err
    rc, err = run("--methods", "coop", "--seeds", "a,b")
    assert rc == 2 and "comma list of integers" in err
    rc, err = run("--methods", "coop", "--shots", "50", "--set", "epochs=1")
    assert rc == 2 and "shot" in err


def test_study_full_finetune_wise_ft_alphas_and_modality_gap(example, tmp_path, capsys, monkeypatch):
    """FT and one WiSE-FT row per alpha (the endpoint named as a study method) in one command;
    alpha 0 is the zero-shot model and alpha 1 the FT adapter, exactly; the modality gap is in
    every result with text class features and in the study's tables."""
    monkeypatch.setenv("VLMOOD_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "study"
    args = [
        "study",
        "--model",
        "tiny-test",
        "--benchmark",
        str(example),
        "--methods",
        "zero-shot,ft,wise-ft,plp",
        "--seeds",
        "0",
        "--shots",
        "2",
        "--set",
        "epochs=1",
        "--set",
        "batch_size=4",
        "--set",
        "ft:lr=1e-3",
        "--set",
        "ft:warmup_steps=0",
        "--param",
        "wise-ft:endpoint=ft",
        "--param",
        "wise-ft:alphas=0,0.5,1",
        "--scores",
        "mcm,energy",
        "--out",
        str(out),
        "--workers",
        "0",
        "--no-progress",
    ]
    assert main(args) == 0, capsys.readouterr().err
    capsys.readouterr()
    study = json.loads((out / "study.json").read_text())
    table = study["table"]
    assert set(table) == {
        "zero-shot",
        "ft",
        "wise-ft(alpha=0)",
        "wise-ft(alpha=0.5)",
        "wise-ft(alpha=1)",
        "plp",
    }

    def res(row):
        return json.loads(
            (
                out / study["runs"][row]["seeds"].get("0", study["runs"][row]["seeds"].get("-"))["results"]
            ).read_text()
        )

    zs, ft = res("zero-shot"), res("ft")
    w0, w1, wh = res("wise-ft(alpha=0)"), res("wise-ft(alpha=1)"), res("wise-ft(alpha=0.5)")
    assert w0["id_accuracy"] == zs["id_accuracy"] and w1["id_accuracy"] == ft["id_accuracy"]
    assert w0["scores"]["energy"]["near_mean"]["auroc"] == pytest.approx(
        zs["scores"]["energy"]["near_mean"]["auroc"]
    )
    assert w1["scores"]["energy"]["near_mean"]["auroc"] == pytest.approx(
        ft["scores"]["energy"]["near_mean"]["auroc"]
    )
    assert w1["modality_gap"]["gap"] == pytest.approx(ft["modality_gap"]["gap"], abs=1e-5)
    # alpha 0 rebuilds the zero-shot head from the same templates as the study's zero-shot run
    assert w0["modality_gap"]["gap"] == pytest.approx(zs["modality_gap"]["gap"], abs=1e-5)
    assert wh["adapter"]["params"]["alpha"] == 0.5
    assert wh["adapter"]["params"]["endpoint"].endswith("adapters/ft/seed0")
    # the gap: measured for text heads, n/a (with the reason) for a probe
    assert 0 < zs["modality_gap"]["gap"] < 2 and -1 <= zs["modality_gap"]["own_cosine"] <= 1
    assert "n/a" in res("plp")["modality_gap"]
    assert "modality_gap" in table["ft"] and "modality_gap" not in table["plp"]
    md = (out / "study.md").read_text()
    assert "Modality gap" in md and "| wise-ft(alpha=0.5) |" in md
    # the report names each WiSE-FT run by its alpha
    assert main(["report", str(out), "--out", str(tmp_path / "report")]) == 0, capsys.readouterr().err
    capsys.readouterr()
    page = (tmp_path / "report" / "report.md").read_text()
    assert "wise-ft(alpha=0.5)" in page and "wise-ft(alpha=0)" in page

    # wise-ft before its endpoint, or its endpoint missing: refused before any work
    bad = list(args)
    bad[bad.index("zero-shot,ft,wise-ft,plp")] = "zero-shot,wise-ft,ft"
    assert main(bad + ["--out", str(tmp_path / "bad")]) == 2
    assert "list ft before wise-ft" in capsys.readouterr().err


def test_study_wise_ft_endpoint_checked_before_any_training(example, tmp_path, capsys):
    def run(methods, endpoint, *extra):
        out = tmp_path / f"s{len(list(tmp_path.iterdir()))}"
        rc = main(
            ["study", "--model", "tiny-test", "--benchmark", str(example), "--methods", methods]
            + ["--param", f"wise-ft:endpoint={endpoint}", "--out", str(out), "--workers", "0", *extra]
        )
        return rc, capsys.readouterr().err, out

    for methods, endpoint, needle in [
        ("zero-shot,ft,wise-ft", "flyp", "neither a method of this study nor an adapter folder"),
        ("zero-shot,ft,wise-ft", "zero-shot", "is not a full fine-tune"),
        ("zero-shot,coop,wise-ft", "coop", "is not a full fine-tune"),
    ]:
        rc, err, out = run(methods, endpoint)
        assert rc == 2 and needle in err, err
        assert not (out / "adapters").exists()  # nothing trained
    rc, err, _ = run("zero-shot,ft,wise-ft", "ft", "--set", "strategy=fsdp")
    assert rc == 2 and "torchrun" in err
