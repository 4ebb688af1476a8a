"""Contrastive image-text pretraining (CLIP loss, learnable temperature) from scratch.

Reads image-caption pairs from prepared sources (``<dir>/pairs.csv`` with ``path,caption``),
drops every image listed in exclusion files (evaluation images), and trains an open_clip model
with the shared training engine. Two text towers:

- ``own``: the architecture's own text transformer, trained from scratch with the image tower;
- ``minilm``: the packaged all-MiniLM-L6-v2 encoder, locked; only its pooled-output projection
  trains. Pooled caption features are computed once, so a step costs only the image tower.

The run directory holds ``pairs_used.csv`` and ``pairs_excluded.csv`` (the split, written down),
the engine's ``last.pt``/``metrics.jsonl``/``config.json`` and the final model in ``model/``
(loadable as ``local-dir:<out>/model``).

Validation (``val_fraction``, ``vlmood pretrain --val-fraction F``): a seeded fraction of the
pairs left after the exclusions is held out of training (``pairs_val.csv``); every
``train.val_every`` epochs and after the last, each held-out image is classified among the
held-out pairs' distinct captions with the weights trained so far (rank 0, eval transform), and
the top-1 accuracy is logged as ``val/id_accuracy`` in the epoch's row of ``metrics.jsonl``
(TensorBoard / MLflow with ``train.tensorboard`` / ``train.mlflow``).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter, ImageOps
from torch.utils.data import Dataset

from vlmood import distributed as D
from vlmood.data.base import DataError, is_within
from vlmood.data.templates import render
from vlmood.errors import UsageError
from vlmood.train.engine import TrainConfig, Trainer, _autocast, kept_modes
from vlmood.utils import atomic_path, sha256_json

log = logging.getLogger(__name__)

CAPTION_TEMPLATES = (
    "{}",
    "a photo of a {}.",
    "an emoji of {}.",
    "a drawing of a {}.",
    "a picture of {}.",
    "an icon of a {}.",
)


@dataclass
class Pairs:
    paths: list[str] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)


def _source_root(path: Path) -> Path:
    """The prepared-source folder an exclusion file belongs to (the nearest parent with pairs.csv)."""
    for parent in [path.parent, *path.parents]:
        if (parent / "pairs.csv").exists() or (parent / "vlmood_prepared.json").exists():
            return parent
    return path.parent


def read_exclusions(files: Sequence[str | os.PathLike]) -> set[str]:
    """Absolute paths listed in exclusion files (one path per line; relative to the file's source)."""
    out: set[str] = set()
    for f in files:
        f = Path(f)
        if not f.is_file():
            raise DataError(f"exclusion file {f} does not exist")
        root = _source_root(f)
        for line in f.read_text(encoding="utf-8").splitlines():
            line = line.strip().split()[0] if line.strip() else ""
            if not line or line.startswith("#"):
                continue
            p = Path(line)
            out.add(os.path.realpath(p if p.is_absolute() else root / p))
    return out


def load_pairs(dirs: Sequence[str | os.PathLike], exclude: set[str] | None = None) -> tuple[Pairs, Pairs]:
    """(used, excluded) image-caption pairs from each ``<dir>/pairs.csv``."""
    used, dropped = Pairs(), Pairs()
    exclude = exclude or set()
    for d in dirs:
        d = Path(d)
        f = d / "pairs.csv"
        if not f.is_file():
            raise DataError(
                f"{f} not found: pretraining reads prepared sources with a pairs.csv (path,caption); "
                f"run `vlmood data prepare SOURCE --out {d}` first"
            )
        with open(f, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or "path" not in reader.fieldnames or "caption" not in reader.fieldnames:
                raise DataError(f"{f}: needs the columns path,caption (has {reader.fieldnames})")
            for row in reader:
                cap = (row.get("caption") or "").strip()
                if not cap:
                    continue
                if not is_within(row["path"], d):
                    raise DataError(
                        f"{f}:{reader.line_num}: path {row['path']!r} leaves the source folder {d}; "
                        "pairs.csv paths must be relative paths inside it"
                    )
                p = os.path.realpath(d / row["path"])  # symlinks and '..' must not dodge exclusions
                target = dropped if p in exclude else used
                target.paths.append(p)
                target.captions.append(cap)
                target.sources.append(d.name)
    if not used.paths:
        raise DataError(f"no image-caption pairs left in {', '.join(map(str, dirs))} after exclusions")
    if exclude and not dropped.paths:
        raise DataError(
            f"the exclusion list(s) ({len(exclude)} paths) match no image of {', '.join(map(str, dirs))}: "
            f"they were written for another data folder; nothing would be kept out of pretraining"
        )
    for d in dirs:
        own = Path(d) / "splits" / "pretrain_exclude.txt"
        if own.is_file() and not any(p.startswith(os.path.realpath(d) + os.sep) for p in exclude):
            log.warning(
                "%s lists evaluation images to keep out of pretraining, but was not passed to --exclude", own
            )
    return used, dropped


class RandomLineArt:
    """With probability p, turn an image into dark edges on white (a sketch-like view)."""

    def __init__(self, p: float = 0.15) -> None:
        self.p = p

    def __call__(self, img: Image.Image) -> Image.Image:
        if random.random() >= self.p:
            return img
        edges = img.convert("L").filter(ImageFilter.FIND_EDGES)
        edges = ImageOps.autocontrast(edges)
        return ImageOps.invert(edges).convert("RGB")


def train_transform(image_size: int, mean: Sequence[float], std: Sequence[float]):
    import torchvision.transforms as T

    return T.Compose(
        [
            T.RandomResizedCrop(
                image_size, scale=(0.6, 1.0), ratio=(0.85, 1.18), interpolation=T.InterpolationMode.BICUBIC
            ),
            T.RandomApply([T.ColorJitter(0.3, 0.3, 0.3, 0.05)], p=0.6),
            RandomLineArt(0.15),
            T.RandomGrayscale(p=0.15),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )


class PairImages(Dataset):
    """(image tensor, caption index, template index) per pair; decode errors name the file."""

    def __init__(self, pairs: Pairs, caption_ids: list[int], transform, n_templates: int) -> None:
        self.paths = pairs.paths
        self.caption_ids = caption_ids
        self.transform = transform
        self.n_templates = n_templates

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from vlmood.data.sources import open_image

        img = open_image(self.paths[i])
        t = int(torch.randint(self.n_templates, (1,)))
        return self.transform(img), self.caption_ids[i], t


@dataclass
class PretrainConfig:
    data: list[str]
    out: str
    model_config: str  # JSON file or a packaged config name under resources/model_configs
    text_tower: str = "minilm"  # minilm | own
    exclude: list[str] = field(default_factory=list)
    templates: tuple[str, ...] = CAPTION_TEMPLATES
    device: str = "cpu"
    train: TrainConfig = field(default_factory=TrainConfig)
    val_fraction: float | None = None  # pairs held out for validation (None/0: none)


def split_validation(pairs: Pairs, fraction: float, seed: int) -> tuple[Pairs, Pairs]:
    """(training, validation) pairs: ``max(1, round(fraction * n))`` pairs drawn with a seeded
    generator (at least one pair stays for training)."""
    import numpy as np

    if not 0.0 < fraction < 1.0:
        raise UsageError(f"--val-fraction {fraction}: in (0, 1), or 0 for no validation pairs")
    n = len(pairs)
    k = min(max(1, int(round(fraction * n))), n - 1)
    if k < 1:
        raise DataError(f"--val-fraction {fraction}: {n} pair(s) leave none to validate on")
    held = set(
        np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x7A11D]).choice(n, size=k, replace=False).tolist()
    )
    train, val = Pairs(), Pairs()
    for i in range(n):
        dst = val if i in held else train
        dst.paths.append(pairs.paths[i])
        dst.captions.append(pairs.captions[i])
        dst.sources.append(pairs.sources[i])
    return train, val


class EvalImages(Dataset):
    """Images through the evaluation transform (validation)."""

    def __init__(self, paths: list[str], transform) -> None:
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        from vlmood.data.sources import open_image

        return self.transform(open_image(self.paths[i]))


def read_model_config(spec: str) -> dict[str, Any]:
    from importlib import resources

    p = Path(spec)
    if p.is_file():
        return json.loads(p.read_text())
    name = spec if spec.endswith(".json") else f"{spec}.json"
    for folder in ("pretrain_configs", "model_configs"):
        res = resources.files("vlmood") / "resources" / folder / name
        if res.is_file():
            return json.loads(res.read_text())
    raise DataError(
        f"model config {spec!r} is neither a JSON file nor a packaged config (resources/pretrain_configs)"
    )


def build_model(cfg: PretrainConfig, model_cfg: dict[str, Any]):
    """(module, tokenizer or None, resolved cfg) with the trainable parameters set."""
    if cfg.text_tower == "minilm":
        from vlmood.models.minilm_clip import build_minilm_clip

        return build_minilm_clip(model_cfg, lock_text=True, seed=cfg.train.seed)
    if cfg.text_tower != "own":
        raise ValueError(f"unknown text tower {cfg.text_tower!r}; choose minilm or own")
    import open_clip

    with torch.random.fork_rng():
        torch.manual_seed(cfg.train.seed)
        model = open_clip.CLIP(
            **{
                k: v
                for k, v in model_cfg.items()
                if k in ("embed_dim", "vision_cfg", "text_cfg", "quick_gelu")
            }
        )
    tokenizer = open_clip.SimpleTokenizer(
        context_length=model_cfg.get("text_cfg", {}).get("context_length", 77)
    )
    return model, tokenizer, model_cfg


@torch.no_grad()
def minilm_pooled(model, tokenizer, texts: list[str], batch_size: int = 512, device="cpu") -> torch.Tensor:
    """Pooled (pre-projection) MiniLM features of ``texts``: [N, 384].

    Texts are sorted by token length and each batch is cut to its longest text (padding is
    masked out of attention and pooling, so this changes nothing but the cost).
    """
    text = model.text
    pad = text.config.pad_token_id
    tokens = tokenizer(texts)
    lengths = (tokens != pad).long().cumsum(1).argmax(1) + 1
    order = torch.argsort(lengths, stable=True)
    out = torch.empty(len(texts), text.transformer.config.hidden_size)
    for i in range(0, len(texts), batch_size):
        idx = order[i : i + batch_size]
        tok = tokens[idx, : int(lengths[idx].max())].to(device)
        attn = (tok != pad).long()
        h = text.transformer(input_ids=tok, attention_mask=attn)
        out[idx] = text.pooler(h, attn).float().cpu()
    return out


def clip_param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """CLIP/open_clip practice: no weight decay on gains, biases, embeddings-like 1-D tensors and the
    logit scale; decay on matrices."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or "logit_scale" in name or name.endswith(".bias") or "ln" in name.split(".")[-2:-1]:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _caption_validator(model, tokenizer, val: Pairs, resolved, mean, std, cfg: PretrainConfig, device):
    """The engine's ``validate``: top-1 of each held-out image among the held-out distinct captions
    (as written, the first caption template) with the current weights; rank 0 only (the engine)."""
    import open_clip
    from torch.utils.data import DataLoader

    caps = sorted(set(val.captions))
    target = torch.tensor([caps.index(c) for c in val.captions])
    texts = [render(cfg.templates[0], c) for c in caps]
    pooled = None
    if cfg.text_tower == "minilm":  # the locked tower in eval mode, without touching the RNG
        with kept_modes(model), torch.random.fork_rng(devices=[]):
            model.eval()
            pooled = minilm_pooled(model, tokenizer, texts, device=device)
    tokens = tokenizer(texts) if pooled is None else None
    transform = open_clip.image_transform(resolved["vision_cfg"]["image_size"], False, mean=mean, std=std)
    loader = DataLoader(EvalImages(val.paths, transform), batch_size=64, num_workers=0)
    precision = cfg.train.precision

    def validate(trainer) -> dict[str, float]:
        m = trainer.module
        m.eval()
        with torch.inference_mode(), _autocast(trainer.device, precision):
            if pooled is not None:
                txt = m.text.proj(pooled.to(trainer.device))
            else:
                txt = m.encode_text(tokens.to(trainer.device))
            txt = F.normalize(txt.float(), dim=-1)
            preds = []
            for x in loader:
                img = F.normalize(m.encode_image(x.to(trainer.device)).float(), dim=-1)
                preds.append((img @ txt.T).argmax(1).cpu())
        return {"val/id_accuracy": float((torch.cat(preds) == target).float().mean())}

    return validate


def pretrain(cfg: PretrainConfig, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Run contrastive pretraining; returns a summary (final loss, time, counts, model dir)."""
    import open_clip
    from open_clip.loss import ClipLoss

    cfg.train.check()  # before any work (an --mlflow without the package, --val-every < 0 ...)
    out = Path(cfg.out)
    exclude = read_exclusions(cfg.exclude)
    used, dropped = load_pairs(cfg.data, exclude)
    val_pairs = None
    if cfg.val_fraction:
        used, val_pairs = split_validation(used, cfg.val_fraction, cfg.train.seed)
    elif cfg.train.val_every:
        raise UsageError(
            f"--val-every {cfg.train.val_every} has nothing to validate on: add --val-fraction F (pairs held "
            "out of training)"
        )
    model_cfg = read_model_config(cfg.model_config)
    model, tokenizer, resolved = build_model(cfg, model_cfg)
    device = torch.device(cfg.device)
    model.to(device)
    # captions x templates, deduplicated
    uniq = sorted(set(used.captions))
    cap_index = {c: i for i, c in enumerate(uniq)}
    caption_ids = [cap_index[c] for c in used.captions]
    n_t = len(cfg.templates)
    texts = [render(t, c) for c in uniq for t in cfg.templates]
    cfg.train.extra = {
        **cfg.train.extra,
        "pairs": sha256_json([used.paths, used.captions]),
        "model_cfg": sha256_json(model_cfg),
        "text_tower": cfg.text_tower,
        "templates": list(cfg.templates),
    }
    if D.is_main():
        out.mkdir(parents=True, exist_ok=True)
        written = [("pairs_used.csv", used), ("pairs_excluded.csv", dropped)]
        for name, pairs in written + ([("pairs_val.csv", val_pairs)] if val_pairs is not None else []):
            with atomic_path(out / name) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
                w = csv.writer(fh)
                w.writerow(["path", "caption", "source"])
                w.writerows(zip(pairs.paths, pairs.captions, pairs.sources))
    log.info("pretraining on %d pairs (%d unique captions, %d excluded)", len(used), len(uniq), len(dropped))
    pooled = None
    if cfg.text_tower == "minilm":
        cache = out / "text_pooled.pt"
        from vlmood.models.minilm_clip import minilm_version

        key = sha256_json({"texts": texts, "minilm": minilm_version()})
        if cache.exists():
            state = torch.load(cache, weights_only=True)
            pooled = state["pooled"] if state.get("key") == key else None
        if pooled is None:
            model.eval()
            pooled = minilm_pooled(model, tokenizer, texts, device=device)
            if D.is_main():
                with atomic_path(cache) as tmp:
                    torch.save({"key": key, "pooled": pooled}, tmp)
        pooled = pooled.to(device)
    else:
        all_tokens = tokenizer(texts)

    pp = resolved.get("preprocess_cfg", {})
    mean = pp.get("mean", open_clip.OPENAI_DATASET_MEAN)
    std = pp.get("std", open_clip.OPENAI_DATASET_STD)
    image_size = resolved["vision_cfg"]["image_size"]
    dataset = PairImages(used, caption_ids, train_transform(image_size, mean, std), n_t)
    loss_mod = ClipLoss(world_size=D.world_size(), rank=D.rank(), gather_with_grad=True)
    validate = None
    if val_pairs is not None and cfg.train.val_every:
        validate = _caption_validator(model, tokenizer, val_pairs, resolved, mean, std, cfg, device)

    def loss_fn(module, batch):
        images, cid, tid = batch
        m = module
        img = F.normalize(m.encode_image(images), dim=-1)
        rows = cid * n_t + tid
        if pooled is not None:
            txt = F.normalize(m.text.proj(pooled[rows].to(img.dtype)), dim=-1)
        else:
            txt = F.normalize(m.encode_text(all_tokens[rows.cpu()].to(images.device)), dim=-1)
        scale = m.logit_scale.exp().clamp(max=100.0)
        loss = loss_mod(img.float(), txt.float(), scale)
        return loss, {"logit_scale": float(scale.detach())}

    trainer = Trainer(
        model,
        dataset,
        loss_fn,
        cfg.train,
        out,
        device=device,
        progress=progress,
        param_groups=clip_param_groups(model, cfg.train.weight_decay),
        validate=validate,
    )
    history = trainer.fit(resume=resume)
    summary = {
        "pairs_used": len(used),
        "pairs_excluded": len(dropped),
        **({"pairs_val": len(val_pairs)} if val_pairs is not None else {}),
        **{k: v for k, v in (history[-1] if history else {}).items() if k.endswith("_accuracy")},
        "unique_captions": len(uniq),
        "epochs": cfg.train.epochs,
        "final_loss": history[-1]["loss"] if history else None,
        "train_time_s": sum(h["time_s"] for h in history),
        "sources": sorted(set(used.sources)),
    }
    if D.is_main():
        model.eval()
        model_dir = out / "model"
        if cfg.text_tower == "minilm":
            from vlmood.models.minilm_clip import save_minilm_clip_dir

            save_minilm_clip_dir(model, resolved, model_dir, extra={"arch": Path(cfg.model_config).stem})
        else:
            from safetensors.torch import save_file

            from vlmood.utils import atomic_write_json

            model_dir.mkdir(parents=True, exist_ok=True)
            with atomic_path(model_dir / "open_clip_model.safetensors") as tmp:
                save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
            atomic_write_json(
                model_dir / "open_clip_config.json",
                {"model_cfg": resolved, "preprocess_cfg": {"mean": list(mean), "std": list(std)}},
            )
        summary["model_dir"] = str(model_dir)
        from vlmood.eval.provenance import environment_info
        from vlmood.utils import atomic_write_json

        summary["environment"] = environment_info(device)  # the record results and adapters carry

        atomic_write_json(out / "summary.json", summary)
    return summary
