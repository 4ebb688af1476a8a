"""`vlmood attack`: run the feature-space manipulation over a dataset and write it as a dataset.

Output folder (``--out``):

- ``attack.json``: what ran (model identity, the attacked and target sets' fingerprints, the
  config, the selected images) and its status; a rerun with other inputs into the same folder is
  refused, a rerun with the same inputs resumes.
- ``images/NNNNNN.png``: the manipulated images at the model's input resolution (lossless PNG,
  8-bit: the pixels every later command reads).
- ``parts/batch-NNNNN.csv``: one file per finished batch (written after its images): a killed run
  resumes at the first missing batch; under torchrun batches are dealt to ranks round-robin.
- ``manifest.csv``: the dataset (``path`` relative to the folder, ``label`` -1, the source image,
  its set, the target image and class, cosine to the target before and after, l-inf of the
  perturbation). ``csv:OUT/manifest.csv`` is an OOD set for ``vlmood eval`` like any other.
- ``originals.txt``: the attacked source images (absolute paths), for the matching "original" set.

The cosines and l-inf in the manifest are measured on the written 8-bit pixels.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from vlmood import distributed as D
from vlmood.attacks.feature import AttackConfig, attack_batch
from vlmood.data.base import DataError, ImageSample, ImageSource
from vlmood.data.sources import open_image
from vlmood.errors import RunError, UsageError
from vlmood.models.base import VLM
from vlmood.utils import (
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    check_own_folder,
    sha256_file,
    sha256_json,
)

log = logging.getLogger(__name__)

SCHEMA = "vlmood.attack/1"
MANIFEST_FIELDS = (
    "path",
    "label",
    "source",
    "source_set",
    "target",
    "target_label",
    "target_class",
    "cos_before",
    "cos_after",
    "linf",
)


# ----------------------------------------------------------------------------- pixels
@dataclass
class PixelPipeline:
    """The model's preprocessing split at its final Normalize: ``to_pixels`` (PIL -> [0, 1] tensor
    at the input resolution) and ``normalize`` (differentiable, on tensors)."""

    to_pixels: Any
    mean: torch.Tensor
    std: torch.Tensor

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.device, x.dtype)) / self.std.to(x.device, x.dtype)


def pixel_pipeline(model: VLM) -> PixelPipeline:
    """Split ``model.preprocess`` (a torchvision Compose ending in Normalize)."""
    from torchvision import transforms as T

    pre = model.preprocess
    steps = list(getattr(pre, "transforms", []))
    if not steps or not isinstance(steps[-1], T.Normalize):
        raise UsageError(
            f"model {model.identity.spec or model.identity.arch}: its preprocessing does not end in a "
            "torchvision Normalize step, so the attack cannot apply the perturbation before normalisation"
        )
    norm = steps[-1]
    mean = torch.tensor(norm.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(norm.std, dtype=torch.float32).view(1, -1, 1, 1)
    return PixelPipeline(T.Compose(steps[:-1]), mean, std)


def load_pixels(pipe: PixelPipeline, paths: Sequence[str]) -> torch.Tensor:
    return torch.stack([pipe.to_pixels(open_image(p)) for p in paths])


def quantize(x: torch.Tensor, y: torch.Tensor | None = None, epsilon: float | None = None) -> np.ndarray:
    """[B, 3, H, W] in [0, 1] -> uint8 [B, H, W, 3] (round to nearest). With ``y`` and ``epsilon``
    the 8-bit values stay within the budget around ``y`` (rounding alone could cross it by half a
    step)."""
    q = (x.detach().clamp(0, 1) * 255.0).round()
    if epsilon is not None and y is not None:
        y255, e255 = y.detach() * 255.0, epsilon * 255.0
        lo = torch.ceil(y255 - e255 - 1e-3).clamp(0, 255)
        hi = torch.floor(y255 + e255 + 1e-3).clamp(0, 255)
        q = torch.minimum(torch.maximum(q, lo), torch.maximum(hi, lo))
    return q.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def write_png(path: Path, pixels: np.ndarray) -> None:
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buf, format="PNG")
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())


def feature_encoder(model: VLM, pipe: PixelPipeline, feature: str):
    """[0, 1] pixels -> the attacked feature (gradients flow)."""

    def encode(x: torch.Tensor) -> torch.Tensor:
        return model.encode_image_features(pipe.normalize(x), (feature,))[feature]

    return encode


# ----------------------------------------------------------------------------- plan
@dataclass
class AttackPlan:
    """Which OOD image is attacked towards which ID training image (seeded)."""

    sources: list[ImageSample]
    source_sets: list[str]
    targets: list[int]  # indices into the target set

    def __len__(self) -> int:
        return len(self.sources)


def make_plan(
    ood: Sequence[tuple[str, ImageSource]], target_set: ImageSource, seed: int, limit: int | None
) -> AttackPlan:
    """The attacked images (all, or ``limit`` drawn without replacement, kept in their order) and
    a seeded random ID target for each."""
    samples: list[ImageSample] = []
    names: list[str] = []
    for name, src in ood:
        samples.extend(src.samples)
        names.extend([name] * len(src))
    if not samples:
        raise UsageError("no OOD images to attack: the chosen OOD sets are empty")
    if len(target_set) == 0:
        raise UsageError(f"the ID training set {target_set.name!r} ({target_set.origin}) has no images")
    if limit is not None:
        if limit < 1:
            raise UsageError(f"--limit must be >= 1, got {limit}")
        if limit < len(samples):
            pick = np.sort(np.random.default_rng([seed, 0]).choice(len(samples), size=limit, replace=False))
            samples = [samples[i] for i in pick]
            names = [names[i] for i in pick]
    targets = np.random.default_rng([seed, 1]).integers(0, len(target_set), size=len(samples))
    return AttackPlan(samples, names, [int(t) for t in targets])


def attack_identity(
    model: VLM, plan: AttackPlan, target_set: ImageSource, cfg: AttackConfig, classnames: Sequence[str] = ()
) -> dict[str, Any]:
    """What decides the written dataset: the model, the settings, which images meet which targets
    (absolute paths), what those files hold (content hashes: a copy of the data at the same paths
    with new mtimes, as on another machine, still resumes; an edited image does not) and the class
    names the manifest records."""
    cfg_d = cfg.to_dict()
    cfg_d.pop("batch_size")  # results do not depend on it (module docstring of attacks.feature)
    targets = [target_set.samples[t].path for t in plan.targets]
    files = sorted({s.path for s in plan.sources} | set(targets))
    return {
        "model": model.identity.key,
        "config": cfg_d,
        "sources": sha256_json([[s.path, n] for s, n in zip(plan.sources, plan.source_sets)]),
        "targets": sha256_json([targets, len(target_set)]),
        "content": sha256_json([[p, _file_digest(p)] for p in files]),
        "classnames": sha256_json(list(classnames)),
    }


def _file_digest(path: str) -> str:
    try:
        return sha256_file(path)
    except OSError as e:
        raise DataError(f"cannot read {path} ({e.strerror or e}); fix the file or its set") from e


# ----------------------------------------------------------------------------- run
def _part_path(out: Path, b: int) -> Path:
    return out / "parts" / f"batch-{b:05d}.csv"


def _read_part(path: Path) -> list[dict[str, str]] | None:
    try:
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error):
        return None
    return rows


def _rows_csv(rows: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(MANIFEST_FIELDS), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _check_out(out: Path, ident: dict[str, Any]) -> dict[str, Any] | None:
    """The folder's previous attack.json (same identity: resume) or None; other identity: refused."""
    meta = out / "attack.json"
    check_own_folder(out, meta.exists(), "an attack")
    if not meta.exists():
        return None
    import json

    try:
        prev = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UsageError(f"{meta} cannot be read ({e}); choose a new --out") from e
    if prev.get("identity_key") != sha256_json(ident):
        changed = sorted(k for k in ident if prev.get("identity", {}).get(k) != ident[k])
        raise UsageError(
            f"--out {out} holds an attack of other inputs (differs in: {', '.join(changed) or 'format'}); "
            "choose a new --out, or rerun with the same model, sets and settings to resume it"
        )
    return prev


def run_attack(
    model: VLM,
    ood: Sequence[tuple[str, ImageSource]],
    target_set: ImageSource,
    out: str | os.PathLike,
    cfg: AttackConfig,
    *,
    limit: int | None = None,
    classnames: Sequence[str] | None = None,
    progress: bool = True,
    rank: int | None = None,
    world: int | None = None,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Attack every planned image; write the dataset into ``out``; return attack.json's content.

    ``rank``/``world`` default to the torchrun process group (batches dealt round-robin; rank 0
    writes the manifest once every batch is done). ``stop_after`` (tests) stops after that many
    batches of this rank, as a kill would.
    """
    out = Path(out).absolute()
    rank = D.rank() if rank is None else rank
    world = D.world_size() if world is None else world
    dist = world > 1 and D.is_initialized()
    names = list(classnames or target_set.classnames or [])
    plan = make_plan(ood, target_set, cfg.seed, limit)
    ident = attack_identity(model, plan, target_set, cfg, names)
    prev = _check_out(out, ident) if rank == 0 else None
    if dist:
        prev = D.broadcast_object(prev)
    n = len(plan)
    if prev is not None and prev.get("status") == "complete" and _manifest_ok(out, n):
        log.info("attack: %s is complete; nothing to do", out)
        return prev
    if prev is not None and prev["config"]["batch_size"] != cfg.batch_size:
        # finished batches are recorded in the previous batch size: keep it, or they would be redone
        log.info("attack: resuming with the batch size of the first run (%d)", prev["config"]["batch_size"])
        cfg = dataclasses.replace(cfg, batch_size=int(prev["config"]["batch_size"]))
    n_batches = (n + cfg.batch_size - 1) // cfg.batch_size
    meta: dict[str, Any] = {
        "schema": SCHEMA,
        "identity": ident,
        "identity_key": sha256_json(ident),
        "model": model.identity.to_dict(),
        "config": cfg.to_dict(),
        "kind": cfg.kind,
        "limit": limit,
        "n_images": n,
        "n_batches": n_batches,
        "ood_sets": [name for name, _ in ood],
        "target_set": {"name": target_set.name, "origin": target_set.origin, "n": len(target_set)},
        "status": "running",
    }
    if rank == 0:
        (out / "images").mkdir(parents=True, exist_ok=True)
        (out / "parts").mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "attack.json", meta)
        atomic_write_text(out / "originals.txt", "".join(f"{s.path}\n" for s in plan.sources))
    if dist:
        D.barrier()

    pipe = pixel_pipeline(model)
    encode = feature_encoder(model, pipe, cfg.feature)
    module = model.torch_module
    was_training = module.training
    grads = [p.requires_grad for p in module.parameters()]
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    mine = [b for b in range(n_batches) if b % world == rank]
    todo = [b for b in mine if not _batch_done(out, b, plan, cfg)]
    log.info("attack: %d images in %d batches; %d to do on rank %d", n, n_batches, len(todo), rank)
    t0 = time.perf_counter()
    done_images = 0
    try:
        bar = _progress(len(todo), progress and rank == 0)
        for i, b in enumerate(todo):
            if stop_after is not None and i >= stop_after:
                break
            lo, hi = b * cfg.batch_size, min(n, (b + 1) * cfg.batch_size)
            _run_batch(model, pipe, encode, plan, target_set, names, cfg, out, b, lo, hi)
            done_images += hi - lo
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
    finally:
        for p, g in zip(module.parameters(), grads):
            p.requires_grad_(g)
        module.train(was_training)
    elapsed = time.perf_counter() - t0
    if dist:
        D.barrier()
    final = _finish(out, meta, plan, cfg, n_batches, done_images, elapsed, model, prev) if rank == 0 else None
    if dist:  # every rank returns the finished attack.json (the evaluation runs on all of them)
        final = D.broadcast_object(final)
    return final if final is not None else meta


def _manifest_ok(out: Path, n: int) -> bool:
    try:
        rows = manifest_rows(out)
    except UsageError:
        return False
    return len(rows) == n and all((out / r["path"]).is_file() for r in rows)


def _finish(out, meta, plan, cfg, n_batches, done_images, elapsed, model, prev) -> dict[str, Any]:
    """Rank 0 after every rank's batches: the manifest and the final attack.json (or the count of
    batches still missing, after a stop)."""
    missing = [b for b in range(n_batches) if not _batch_done(out, b, plan, cfg)]
    if missing:
        meta["status"] = "incomplete"
        meta["missing_batches"] = len(missing)
        atomic_write_json(out / "attack.json", meta)
        return meta
    rows = _merge(out, n_batches)
    cos_b = np.array([float(r["cos_before"]) for r in rows])
    cos_a = np.array([float(r["cos_after"]) for r in rows])
    meta.update(
        status="complete",
        summary={
            "cos_before_mean": float(cos_b.mean()),
            "cos_after_mean": float(cos_a.mean()),
            "cos_gain_min": float((cos_a - cos_b).min()),
            "linf_max": float(max(float(r["linf"]) for r in rows)),
            "linf_mean": float(np.mean([float(r["linf"]) for r in rows])),
        },
    )
    if done_images:
        meta["throughput"] = {
            "images": done_images,
            "seconds": round(elapsed, 3),
            "images_per_s": round(done_images / elapsed, 4) if elapsed > 0 else None,
            "device": str(model.device),
        }
    elif prev is not None and "throughput" in prev:
        meta["throughput"] = prev["throughput"]
    atomic_write_json(out / "attack.json", meta)
    return meta


def _progress(total: int, show: bool):
    if not show or total == 0:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return None
    return tqdm(total=total, desc="attack batches", unit="batch")


def _image_name(pos: int) -> str:
    return f"images/{pos:06d}.png"


def _batch_done(out: Path, b: int, plan: AttackPlan, cfg: AttackConfig) -> bool:
    rows = _read_part(_part_path(out, b))
    if rows is None:
        return False
    lo, hi = b * cfg.batch_size, min(len(plan), (b + 1) * cfg.batch_size)
    if len(rows) != hi - lo:
        return False
    return all(
        r.get("path") == _image_name(lo + i) and (out / r["path"]).is_file() for i, r in enumerate(rows)
    )


def _run_batch(model, pipe, encode, plan, target_set, names, cfg, out, b, lo, hi) -> None:
    positions = list(range(lo, hi))
    src_paths = [plan.sources[i].path for i in positions]
    tgt_samples = [target_set.samples[plan.targets[i]] for i in positions]
    try:
        y = load_pixels(pipe, src_paths).to(model.device)
        x = load_pixels(pipe, [s.path for s in tgt_samples]).to(model.device)
    except DataError as e:
        raise RunError(f"{e} (batch {b}; finished batches are kept, a rerun resumes)") from e
    with torch.no_grad():
        target = encode(x).float()
        before = torch.nn.functional.cosine_similarity(encode(y).float(), target, dim=-1)
    delta = attack_batch(encode, y, target, positions, cfg)
    q = quantize(y + delta, y, cfg.epsilon)
    qt = torch.from_numpy(q).permute(0, 3, 1, 2).to(model.device, torch.float32) / 255.0
    with torch.no_grad():
        after = torch.nn.functional.cosine_similarity(encode(qt).float(), target, dim=-1)
        linf = (qt - y).abs().flatten(1).max(1).values
    rows = []
    for j, pos in enumerate(positions):
        write_png(out / _image_name(pos), q[j])
        t = tgt_samples[j]
        rows.append(
            {
                "path": _image_name(pos),
                "label": -1,
                "source": plan.sources[pos].path,
                "source_set": plan.source_sets[pos],
                "target": t.path,
                "target_label": t.label,
                "target_class": names[t.label] if 0 <= t.label < len(names) else "",
                "cos_before": f"{float(before[j]):.6f}",
                "cos_after": f"{float(after[j]):.6f}",
                "linf": f"{float(linf[j]):.6f}",
            }
        )
    atomic_write_text(_part_path(out, b), _rows_csv(rows))


def _merge(out: Path, n_batches: int) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    for b in range(n_batches):
        part = _read_part(_part_path(out, b))
        assert part is not None
        rows.extend(part)
    atomic_write_text(out / "manifest.csv", _rows_csv(rows))
    return rows


# ----------------------------------------------------------------------------- reading back
def read_attack(out: str | os.PathLike) -> dict[str, Any]:
    """attack.json of a complete attack in ``out`` (UsageError otherwise)."""
    import json

    path = Path(out) / "attack.json"
    if not path.is_file():
        raise UsageError(f"{out} holds no attack (no attack.json): run `vlmood attack --out {out}` first")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UsageError(f"{path} cannot be read ({e}); rerun the attack into a new --out") from e
    if meta.get("schema") != SCHEMA:
        raise UsageError(f"{path} is not a {SCHEMA} file")
    if meta.get("status") != "complete":
        raise UsageError(
            f"the attack in {out} is {meta.get('status')}: rerun the same `vlmood attack` command to finish it"
        )
    return meta


def manifest_rows(out: str | os.PathLike) -> list[dict[str, str]]:
    path = Path(out) / "manifest.csv"
    if not path.is_file():
        raise UsageError(f"{out} has no manifest.csv: run `vlmood attack --out {out}` to completion first")
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def manipulated_source(
    out: str | os.PathLike, name: str = "manipulated", rows: list[dict[str, str]] | None = None
) -> ImageSource:
    """The written dataset as an OOD ImageSource (paths under ``out``); ``rows``: the manifest,
    when the caller has read it already."""
    out = Path(out).absolute()
    rows = manifest_rows(out) if rows is None else rows
    return ImageSource(
        name,
        [ImageSample(str(out / r["path"]), -1) for r in rows],
        kind="csv",
        origin=str(out / "manifest.csv"),
    )


def original_source(
    out: str | os.PathLike, name: str = "original", rows: list[dict[str, str]] | None = None
) -> ImageSource:
    """The attacked source images, in the manifest's order (``rows`` as for manipulated_source)."""
    out = Path(out).absolute()
    rows = manifest_rows(out) if rows is None else rows
    return ImageSource(
        name, [ImageSample(r["source"], -1) for r in rows], kind="list", origin=str(out / "originals.txt")
    )
