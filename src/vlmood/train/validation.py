"""Epoch-end validation of ``vlmood fit`` (``--val-fraction``, ``--val-set``, ``--val-every``).

**Split.** ``--val-fraction F`` draws, per class (seeded by the fit seed, its own random stream),
``max(1, round(F * n_c))`` of the training split's ``n_c`` images of class ``c`` from the images
training does not use: with ``--shots`` (or a split file) from those the k-shot split leaves out,
so the k-shot training set is exactly the one trained without validation; without ``--shots``
they are held out of training (at least one image of each class stays in training). Unlabelled
images (label -1) form one more group; they are held out like the others but never scored. The
drawn images are written to ``OUT/val_split.json`` (the training images to ``OUT/split.json``)
and recorded in adapter.json (``data.validation``): never both trained on and validated on.

**Sets.** ``--val-set NAME`` adds a benchmark's domain-shift set (the ID classes in another
domain; or a labelled folder / list / CSV of the ID classes), scored the same way.

**Scoring.** Every ``--val-every N`` epochs and after the last, on rank 0, the method's adapter as
trained so far (:meth:`Method.val_adapter`) classifies each set through its class head (the head
evaluation uses): ``val/id_accuracy`` and ``val/<set>_accuracy`` (top-1 over the labelled images,
a fraction) join the epoch's row in ``train/metrics.jsonl``, TensorBoard and MLflow. Methods that
keep the image encoder frozen read features of the validation images extracted (and cached) once
before training; methods that adapt it (``adapts_image_encoder``: ft, lp-ft, flyp, cma, ueo)
encode them with the current weights at each validation, under ``torch.inference_mode``. The
engine runs this without gradients, with the RNG states and module modes restored, so
validation never changes the trained tensors.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vlmood import distributed as D
from vlmood.data.base import DataError, ImageSource
from vlmood.errors import UsageError

log = logging.getLogger(__name__)

#: the validator ``run_engine`` hands to the engine while ``fit_method`` trains
_ACTIVE: contextvars.ContextVar[Validator | None] = contextvars.ContextVar("vlmood_validator", default=None)
#: salt of the validation draw's random stream (few-shot sampling uses the bare seed)
VAL_SALT = 0x7A11D


def check_val_fraction(fraction: Any) -> float | None:
    """None (no held-out split) or a number in (0, 1), else UsageError."""
    if fraction is None:
        return None
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0.0 < fraction < 1.0:
        raise UsageError(
            f"--val-fraction must be a fraction in (0, 1) of each class's training images, got {fraction!r}; "
            "leave it out for no held-out validation split"
        )
    return float(fraction)


def val_key(name: str) -> str:
    """A set name as a metric key part (``val/<key>_accuracy``)."""
    key = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)).strip("_")
    if not key:
        raise UsageError(f"validation set name {name!r} has no letters or digits")
    return key


def check_val_sets(sets: Mapping[str, ImageSource] | Sequence[tuple[str, ImageSource]] | None) -> dict:
    """``{metric key: source}`` of the domain-shift validation sets (UsageError on clashes)."""
    items = list(sets.items()) if isinstance(sets, Mapping) else list(sets or [])
    out: dict[str, ImageSource] = {}
    for name, src in items:
        if not isinstance(src, ImageSource):
            raise UsageError(f"validation set {name!r}: expected an ImageSource, got {type(src).__name__}")
        key = val_key(name)
        if key == "id" or key in out:
            raise UsageError(
                f"validation set name {name!r} is used twice (or is 'id', the held-out split's name)"
            )
        out[key] = src
    return out


def resolve_val_every(val_every: int | None, val_fraction: float | None, val_sets: Any) -> int:
    """``--val-every``: None means every epoch (1) when something is to be validated, else off (0);
    asking for validation with nothing to validate on is a UsageError."""
    from vlmood.train.engine import check_val_every

    have = bool(val_fraction) or bool(val_sets)
    if val_every is None:
        return 1 if have else 0
    check_val_every(val_every)
    if val_every and not have:
        raise UsageError(
            f"--val-every {val_every} has nothing to validate on: add --val-fraction F (a held-out part "
            "of the training split) and/or --val-set NAME (a domain-shift set)"
        )
    return val_every


def validation_indices(
    labels: Sequence[int], fraction: float, seed: int, used: Sequence[int] | None = None
) -> list[int]:
    """Indices of the validation images (sorted): per label (classes and the unlabelled -1),
    ``max(1, round(fraction * n))`` of its ``n`` images, drawn from those not in ``used`` (the
    training images chosen otherwise); with ``used`` None (training on the rest) one image of each
    class is always left for training."""
    arr = np.asarray(labels, dtype=np.int64)
    taken = np.zeros(len(arr), dtype=bool)
    if used is not None:
        taken[np.asarray(list(used), dtype=np.int64)] = True
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, VAL_SALT])
    chosen: list[int] = []
    for c in np.unique(arr):
        idx = np.flatnonzero(arr == c)
        free = idx[~taken[idx]]
        want = max(1, int(round(fraction * idx.size)))
        room = free.size if used is not None else (free.size - 1 if c >= 0 else free.size)
        k = min(want, max(0, room))
        if k:
            chosen.extend(int(i) for i in rng.choice(free, size=k, replace=False))
    if not chosen:
        why = (
            "the training split uses every image"
            if used is not None
            else "every class has a single image, which training needs"
        )
        raise DataError(f"--val-fraction {fraction}: no image is left to validate on ({why})")
    return sorted(chosen)


@dataclass
class ValSet:
    """One validation set: its metric key, images, labels and (frozen image encoder) features."""

    key: str
    source: ImageSource
    labels: np.ndarray
    features: dict[str, np.ndarray] | None = None


def _readable(labels: np.ndarray, valid: np.ndarray, name: str) -> np.ndarray:
    """``labels`` with the unreadable images' (zero placeholders under skip_corrupt) set to -1."""
    if not valid.all():
        log.warning("validation set %s: %d unreadable images are not scored", name, int((~valid).sum()))
    return np.where(valid, labels, -1)


class Validator:
    """The engine's ``validate`` callable for a method being trained by ``fit_method``."""

    def __init__(self, method, model, classnames: Sequence[str], sets: list[ValSet], extract) -> None:
        self.method, self.model, self.classnames = method, model, list(classnames)
        self.sets, self.extract = sets, extract
        self.calls = 0

    @classmethod
    def prepare(cls, method, model, classnames, sets: Mapping[str, ImageSource], extract) -> Validator:
        """Check the sets' labels and, for a frozen image encoder, extract (cache) their features
        now, on every rank (extraction is collective under torchrun); rank 0 keeps them."""
        vsets: list[ValSet] = []
        k = len(classnames)
        kinds = tuple(method.val_kinds)
        for key, src in sets.items():
            labels = np.asarray(src.labels, dtype=np.int64)
            bad = labels[(labels < -1) | (labels >= k)]
            if bad.size:
                raise DataError(
                    f"validation set {src.name!r}: labels {sorted(set(bad.tolist()))[:5]} are not among the "
                    f"{k} training classes (a validation set must share the training label space)"
                )
            if src.classnames and len(src.classnames) != k:
                raise DataError(
                    f"validation set {src.name!r} has {len(src.classnames)} classes, the training data {k}: "
                    "a validation set must hold images of the training classes"
                )
            feats = None
            if not method.adapts_image_encoder:
                from vlmood.features.extract import extract_features

                fs = extract_features(model, src, kinds, options=extract.replace(progress=False))
                if D.is_main():  # the readable images only (FeatureSet.get), as skip_corrupt asks
                    valid = np.asarray(fs.valid, dtype=bool)
                    if not valid.all():
                        log.warning(
                            "validation set %s: %d unreadable images left out", src.name, (~valid).sum()
                        )
                    labels = labels[valid]
                    feats = {kind: np.asarray(fs.get(kind), dtype=np.float32) for kind in kinds}
            vsets.append(ValSet(key, src, labels, feats))
        return cls(method, model, classnames, vsets, extract)

    def _encode(self, vs: ValSet, kinds: Sequence[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Features of the set's images with the model's current weights (no cache: the weights
        are not the ones its identity names) and the labels of the readable ones."""
        from torch.utils.data import DataLoader

        from vlmood.data.sources import ImageDataset

        ds = ImageDataset(vs.source, self.model.preprocess, skip_corrupt=self.extract.skip_corrupt)
        loader = DataLoader(ds, batch_size=self.extract.batch_size, num_workers=0, shuffle=False)
        parts: dict[str, list[np.ndarray]] = {k: [] for k in kinds}
        ok_all: list[np.ndarray] = []
        dev = self.model.device
        with torch.inference_mode():
            for x, _idx, ok in loader:
                out = self.model.encode_image_features(x.to(dev), tuple(kinds))
                for k in kinds:
                    parts[k].append(out[k].float().cpu().numpy())
                ok_all.append(np.asarray(ok, dtype=bool))
        valid = np.concatenate(ok_all) if ok_all else np.zeros(0, bool)
        return {k: np.concatenate(v) for k, v in parts.items()}, _readable(vs.labels, valid, vs.source.name)

    def __call__(self, trainer=None) -> dict[str, float]:
        """``{"val/<set>_accuracy": top-1}`` of the adapter as trained so far."""
        from vlmood.train.engine import kept_modes

        self.calls += 1
        module = self.model.torch_module
        out: dict[str, float] = {}
        with kept_modes(module), torch.no_grad():
            module.eval()
            adapter = current_adapter(self.method, self.model, self.classnames)
            head = adapter.class_head(self.model.logit_scale)
            for vs in self.sets:
                if vs.features is not None:
                    feats, labels = vs.features, vs.labels
                else:
                    feats, labels = self._encode(vs, (head.feature_kind,))
                known = labels >= 0
                if not known.any():
                    continue
                pred = np.asarray(head.matrix(feats)).argmax(1)
                out[f"val/{vs.key}_accuracy"] = float((pred[known] == labels[known]).mean())
        return out


def check_validates(method) -> None:
    """UsageError (before any work) for a method that has no adapter to validate while training."""
    from vlmood.methods.base import Method
    from vlmood.methods.finetune import FullFinetune

    own = type(method).val_adapter is not Method.val_adapter or isinstance(method, FullFinetune)
    if method.adapts_image_encoder and not own:
        raise UsageError(
            f"method {method.name!r} cannot be validated while it trains (its adapter rewrites the model it "
            "loads onto and it gives no mid-training one): drop --val-every / --val-fraction / --val-set"
        )


def current_adapter(method, model, classnames: Sequence[str]):
    """The adapter of what ``method`` has trained so far (:meth:`Method.val_adapter`)."""
    from vlmood.methods.base import Method
    from vlmood.methods.finetune import FullFinetune

    if isinstance(method, FullFinetune) and type(method).val_adapter is Method.val_adapter:
        return _full_finetune_adapter(method, model, classnames)
    return method.val_adapter(model, classnames)


def _full_finetune_adapter(method, model, classnames: Sequence[str]):
    """ft / lp-ft / flyp / cma mid-training: the model already holds the weights being trained (in
    place), so the adapter is built on it without writing tensors (``apply=False``); its class
    features are the head's ``W / s`` (ft, lp-ft) or the current text tower's template ensemble."""
    from vlmood.methods.finetune import HEAD_KEY, FullFinetuneAdapter

    head = getattr(getattr(method, "module", None), "head", None)
    tensors = {HEAD_KEY: head.weight.detach().float().cpu()} if head is not None else {}
    info = {"method": method.name, "params": method.hparams(), "classnames": list(classnames)}
    return FullFinetuneAdapter(model, info, tensors, apply=False)


@contextlib.contextmanager
def validating(validator: Validator | None) -> Iterator[None]:
    """``run_engine`` hands ``validator`` to the engine for the trainings inside this block."""
    token = _ACTIVE.set(validator)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def active_validator() -> Validator | None:
    return _ACTIVE.get()
