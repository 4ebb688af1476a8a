"""What every adaptation method shares: the method protocol, training data, the adapter artifact.

An **adapter artifact** is a directory with

- ``adapter.safetensors``: the trained tensors only (prompt context, meta-net, probe head, visual
  normalisation affine parameters ...), never the base model;
- ``adapter.json`` (schema ``vlmood.adapter/1``): the method name and its hyperparameters, the base
  model's identity (``key`` = sha256 of what decides its outputs, plus the full identity and the
  user's spec string), the training settings, the class names and their hash, the split file,
  the training metrics and library versions.

``load_adapter(dir, model)`` refuses an artifact made for another base model
(:class:`AdapterMismatchError`) and returns an :class:`Adapter`, which gives class text
features ``[K, D]`` (prompt methods), per-image cosines (CoCoOp, whose text features depend on
the image) or head logits (probes).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.data import Dataset

from vlmood import distributed as D
from vlmood.data.base import DataError, ImageSource
from vlmood.errors import UsageError, VlmoodError
from vlmood.eval.provenance import environment_info
from vlmood.features.options import ExtractOptions
from vlmood.registry import Registry
from vlmood.train.engine import CHECKPOINT_NAME, RUN_ONLY_SETTINGS, TrainConfig
from vlmood.utils import atomic_path, atomic_write_json, check_folder_path, sha256_json

log = logging.getLogger(__name__)

ADAPTER_FORMAT = "vlmood.adapter/1"
ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_JSON = "adapter.json"

METHODS: Registry[type[Method]] = Registry("method")


def register_method(name: str):
    """Class decorator: register a :class:`Method` subclass under ``name``."""

    def deco(cls):
        cls.name = name.lower()
        return METHODS.register(name, cls)

    return deco


def create_method(name: str, **params: Any) -> Method:
    """A method instance with its hyperparameters, checked strictly against its ``Params`` field
    types (unknown keys and wrong types raise :class:`~vlmood.errors.UsageError`)."""
    return METHODS.create(name, **params)


def list_methods(pattern: str = "*") -> list[str]:
    return METHODS.list(pattern)


class AdapterError(VlmoodError, ValueError):
    """An adapter artifact is missing, malformed or does not fit the model it is loaded onto."""


class AdapterMismatchError(AdapterError):
    """The adapter was trained on another base model."""


# ---------------------------------------------------------------------------------------------- identity
def base_identity(model) -> dict[str, Any]:
    """The model identity without adapters applied to it (see :func:`mark_adapted`)."""
    d = model.identity.to_dict()
    d["extra"] = {k: v for k, v in d.get("extra", {}).items() if k != "adapter"}
    return d


def base_identity_key(model) -> str:
    d = base_identity(model)
    d.pop("spec", None)
    return sha256_json(d)


def mark_adapted(model, adapter_key: str) -> None:
    """Record in ``model.identity`` that an adapter changed the model's own weights, so feature
    caches keyed by the identity never mix adapted and base features."""
    ident = model.identity
    extra = dict(ident.extra)
    extra["adapter"] = adapter_key
    model.identity = dataclasses.replace(ident, extra=extra)


# ---------------------------------------------------------------------------------------------- data
@dataclass
class TrainData:
    """What a method trains on: labels (``-1`` = unlabelled), class names and either cached feature
    arrays (``features[kind]``, ``[N, ...]``), an image source (for methods that run the image
    encoder each step: augmentation, UEO), or both."""

    classnames: list[str]
    labels: np.ndarray
    features: dict[str, np.ndarray] = field(default_factory=dict)
    source: ImageSource | None = None
    split_file: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    #: how what the method encodes itself is extracted (cache root, workers, skip_corrupt, ...: UEO)
    extract: ExtractOptions = field(default_factory=ExtractOptions)
    #: the images held out for validation (``fit_method(val_fraction=...)``): never trained on
    val_source: ImageSource | None = None

    @property
    def cache_root(self) -> str | os.PathLike | None:
        """The feature/text cache for what the method encodes (``extract.cache_root``)."""
        return self.extract.cache_root

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        self.classnames = list(self.classnames)
        if not self.classnames:
            raise DataError("training data needs class names")
        n = len(self.labels)
        for k, a in self.features.items():
            if len(a) != n:
                raise DataError(f"feature array {k!r} has {len(a)} rows but there are {n} labels")
        if self.source is not None and len(self.source) != n:
            raise DataError(f"image source {self.source.name!r} has {len(self.source)} images but {n} labels")
        bad = self.labels[(self.labels < -1) | (self.labels >= len(self.classnames))]
        if bad.size:
            raise DataError(
                f"labels out of range for {len(self.classnames)} classes: {sorted(set(bad.tolist()))[:5]}"
            )

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def n_classes(self) -> int:
        return len(self.classnames)


class ArrayDataset(Dataset):
    """Items ``{kind: tensor, "label": long, "index": long}`` from cached feature arrays.

    ``__getitems__`` reads a whole batch with one fancy index per array (the DataLoader uses it
    when present; pair it with :func:`batch_collate`), which keeps probes on 100k+ cached
    features from spending their time in per-sample indexing and collation. Arrays that fit in
    ``max_in_memory`` bytes together are read once into float32 tensors (random batches from a
    memory map cost a page walk per row); larger ones stay memory-mapped."""

    def __init__(
        self, arrays: dict[str, np.ndarray], labels: np.ndarray, max_in_memory: int = 2 << 30
    ) -> None:
        self.labels = np.asarray(labels, dtype=np.int64)
        total = sum(int(np.prod(a.shape)) * 4 for a in arrays.values())
        self.in_memory = total <= max_in_memory
        if self.in_memory:
            self.arrays = {
                k: torch.from_numpy(np.array(a, dtype=np.float32))
                for k, a in arrays.items()  # a copy in RAM
            }
        else:
            self.arrays = arrays
        self._labels_t = torch.from_numpy(self.labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if self.in_memory:
            out = {k: a[i].clone() for k, a in self.arrays.items()}
        else:
            out = {k: torch.from_numpy(np.array(a[i], dtype=np.float32)) for k, a in self.arrays.items()}
        out["label"] = torch.tensor(int(self.labels[i]))
        out["index"] = torch.tensor(int(i))
        return out

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        idx = np.asarray(indices, dtype=np.int64)
        if self.in_memory:
            ti = torch.from_numpy(idx)
            out = {k: a.index_select(0, ti) for k, a in self.arrays.items()}
            out["label"] = self._labels_t.index_select(0, ti)
            out["index"] = ti
            return out
        order = np.argsort(idx, kind="stable")  # sorted reads from memory maps, then back in order
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        out = {}
        for k, a in self.arrays.items():
            rows = np.asarray(a[idx[order]], dtype=np.float32)[back]
            out[k] = torch.from_numpy(np.ascontiguousarray(rows))
        out["label"] = torch.from_numpy(self.labels[idx])
        out["index"] = torch.from_numpy(idx)
        return out


def batch_collate(batch: Any) -> Any:
    """Collate for datasets with ``__getitems__`` (already a batch); default collation otherwise."""
    if isinstance(batch, dict):
        return batch
    from torch.utils.data import default_collate

    return default_collate(batch)


class ImageTrainDataset(Dataset):
    """Items ``{"pixels": tensor, "label", "index"}`` decoded from an image source (strict about
    unreadable files)."""

    def __init__(self, source: ImageSource, transform, labels: np.ndarray) -> None:
        from vlmood.data.sources import ImageDataset

        self.inner = ImageDataset(source, transform, skip_corrupt=False)
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        x, _, _ = self.inner[i]
        return {"pixels": x, "label": torch.tensor(int(self.labels[i])), "index": torch.tensor(int(i))}


def train_transform(model, scale: tuple[float, float] = (0.5, 1.0), flip: bool = True):
    """Random resized crop (the model's interpolation) + horizontal flip (unless ``flip=False``) +
    the model's normalisation (CoOp, UEO; full fine-tuning: scale 0.9-1, no flip)."""
    from torchvision import transforms as T

    pp = model.identity.preprocess
    interp = {
        "bicubic": T.InterpolationMode.BICUBIC,
        "bilinear": T.InterpolationMode.BILINEAR,
        "nearest": T.InterpolationMode.NEAREST,
    }.get(pp.interpolation, T.InterpolationMode.BICUBIC)
    return T.Compose(
        [
            T.RandomResizedCrop(pp.image_size, scale=scale, interpolation=interp),
            *([T.RandomHorizontalFlip()] if flip else []),
            T.ToTensor(),
            T.Normalize(pp.mean, pp.std),
        ]
    )


# ---------------------------------------------------------------------------------------------- protocol
def check_method_params(name: str, params_cls: type, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` checked against the fields of the dataclass ``params_cls``: unknown names are
    refused with the valid ones listed; values must have the field's type (an ``int`` field
    refuses ``'abc'`` and ``2.5``, a ``float`` field takes integers, a ``bool`` field only
    ``true``/``false``), so an adapter never records a value other than the one that trained."""
    import typing

    from vlmood.params import check_value

    fields = [f.name for f in dataclasses.fields(params_cls)]
    unknown = sorted(set(params) - set(fields))
    if unknown:
        raise UsageError(f"method {name!r}: unknown parameter(s) {unknown}; valid: {', '.join(fields)}")
    try:
        hints = typing.get_type_hints(params_cls)
    except Exception:  # pragma: no cover - unresolvable annotations: names only
        hints = {}
    return {
        k: check_value(v, hints.get(k, Any), f"method {name!r} parameter {k!r}") for k, v in params.items()
    }


class Method:
    """An adaptation method. Subclasses set ``Params`` (a dataclass of hyperparameters), ``kinds``
    (cached feature kinds they read) and implement :meth:`fit`, :meth:`tensors` and
    :meth:`build_adapter`."""

    name: ClassVar[str] = ""
    Params: ClassVar[type] = object
    kinds: ClassVar[tuple[str, ...]] = ("image",)
    needs_labels: ClassVar[bool] = True
    #: its adapter changes the base model's own weights when loaded (UEO); evaluate on a fresh copy
    adapts_image_encoder: ClassVar[bool] = False

    @property
    def images_need_features(self) -> bool:
        """A method that reads images each step but also needs cached ``kinds`` features of them
        (UEO's zero-shot confidence weights): extracted with the caller's extraction options."""
        return False

    def __init__(self, **params: Any) -> None:
        self.params = self.Params(**check_method_params(self.name, self.Params, params))
        self.validate()
        self.metrics: dict[str, Any] = {}

    def validate(self) -> None:
        """Check hyperparameter values (raise UsageError)."""

    @property
    def needs_images(self) -> bool:
        """True when training runs the image encoder each step (needs ``TrainData.source``)."""
        return False

    def hparams(self) -> dict[str, Any]:
        return asdict(self.params)

    def default_config(self, **overrides: Any) -> TrainConfig:
        """The paper's training settings (methods.md); ``overrides`` replace fields."""
        return TrainConfig(**overrides)

    def fit(
        self,
        model,
        data: TrainData,
        cfg: TrainConfig,
        out_dir: Path,
        device: str | torch.device,
        progress: bool = True,
        resume: bool = False,
    ) -> dict[str, Any]:
        raise NotImplementedError

    def tensors(self) -> dict[str, torch.Tensor]:
        """The trained tensors that go into ``adapter.safetensors``."""
        raise NotImplementedError

    @property
    def val_kinds(self) -> tuple[str, ...]:
        """Image feature kinds the adapter's class head reads (what validation extracts/encodes)."""
        return ("image",)

    def val_adapter(self, model, classnames: Sequence[str]) -> Adapter:
        """The adapter of the tensors trained so far, for epoch-end validation
        (:mod:`vlmood.train.validation`): :meth:`build_adapter` on :meth:`tensors`. It must leave
        ``model`` as it is, so a method whose adapter writes into the model (``adapts_image_encoder``)
        overrides it with one built on the model it is training in place."""
        if self.adapts_image_encoder:
            raise NotImplementedError(f"method {self.name!r} gives no adapter for validation while training")
        info = {"method": self.name, "params": self.hparams(), "classnames": list(classnames)}
        return type(self).build_adapter(model, info, {k: v.detach() for k, v in self.tensors().items()})

    @classmethod
    def build_adapter(
        cls, model, info: dict[str, Any], tensors: dict[str, torch.Tensor]
    ) -> Adapter:  # pragma: no cover - abstract
        raise NotImplementedError


class Adapter:
    """A trained adapter on top of a base model.

    - ``kind``: ``"prompt"`` (class text features), ``"conditional"`` (CoCoOp: per-image text
      features; use :meth:`similarities`), ``"probe"`` (a head on cached features; use
      :meth:`logits`).
    - ``feature_kind``: the cached image feature kind :meth:`similarities` / :meth:`logits` read.
    - ``adapts_image_encoder``: True when loading changed the model's own weights (UEO); image
      features must then be extracted again (the model identity says so, see ``mark_adapted``).

    Every adapter yields a class head (:meth:`class_head`, of class :meth:`head_type`), through which
    the post-hoc scores evaluate it (:mod:`vlmood.eval.heads`). The base gives a text head on
    :meth:`text_features`; adapters without image-independent text features override both.
    """

    kind: str = "prompt"
    feature_kind: str = "image"
    adapts_image_encoder: bool = False
    #: the artifact folder it was loaded from (set by :func:`load_adapter`)
    path: str | None = None

    def __init__(self, model, info: dict[str, Any]) -> None:
        self.model = model
        self.info = info
        self.method: str = info["method"]
        self.classnames: list[str] = list(info["classnames"])
        self.params: dict[str, Any] = dict(info.get("params", {}))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(method={self.method!r}, kind={self.kind!r}, "
            f"classes={len(self.classnames)}, key={self.key[:12]!r}, path={self.path!r})"
        )

    @property
    def key(self) -> str:
        """Identity of this adapter (sha256 of its weights file and config)."""
        return str(self.info.get("adapter_key", ""))

    @classmethod
    def head_type(cls):
        """The class of :meth:`class_head` (known before loading: scores are checked against its
        ``provides`` before any work)."""
        from vlmood.eval.heads import TextHead

        return TextHead

    def class_head(self, logit_scale: float):
        """The class head this adapter is evaluated through; ``logit_scale``: the base model's
        (heads whose similarities are already scaled, probes, ignore it)."""
        from vlmood.eval.heads import TextHead

        return TextHead(self.text_features(), logit_scale, self)

    def text_features(self) -> np.ndarray:
        """Normalised class text features [K, D] (float32)."""
        raise NotImplementedError(f"{self.method} adapters have no image-independent text features")

    def similarities(
        self, image_features: np.ndarray, patch_features: np.ndarray | None = None
    ) -> np.ndarray:
        """Unscaled cosines [N, K] between image features and the class text features."""
        t = self.text_features()
        return np.asarray(image_features, dtype=np.float32) @ t.T

    def logits(self, features: np.ndarray) -> np.ndarray:
        raise NotImplementedError(f"{self.method} adapters have no classification head; use similarities()")

    def record(self, path: str | os.PathLike) -> dict[str, Any]:
        """What results.json says about the adapter an evaluation used."""
        return {
            "path": str(path),
            "method": self.method,
            "kind": self.kind,
            "params": self.info.get("params"),
            "key": self.key,
            "train": self.info.get("train"),
            "data": self.info.get("data"),
            "split_file": self.info.get("split_file"),
            "metrics": self.info.get("metrics"),
            **({"label": self.info["label"]} if self.info.get("label") else {}),
        }

    def for_classes(self, classnames: Sequence[str]) -> Adapter | None:
        """The same trained adapter applied to other class names (e.g. held-out classes: a learned
        shared prompt context transfers to new names), or None when it cannot be (class-specific
        context, a probe's head)."""
        return None


# ---------------------------------------------------------------------------------------------- artifact IO
def save_adapter(
    out_dir: str | os.PathLike,
    method: Method,
    model,
    cfg: TrainConfig | None,
    classnames: Sequence[str],
    split_file: str | None = None,
    metrics: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``adapter.safetensors`` then ``adapter.json`` (both atomically; the JSON last, so a
    directory with a JSON holds a complete artifact)."""
    from safetensors.torch import save

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in method.tensors().items()}
    # serialised in memory and written through atomic_path (normal permissions, fsync'd rename)
    blob = save(tensors, metadata={"format": ADAPTER_FORMAT, "method": method.name})
    with atomic_path(out / ADAPTER_WEIGHTS) as tmp, open(tmp, "wb") as f:
        f.write(blob)
        f.flush()
        os.fsync(f.fileno())
    import hashlib

    weights_sha = hashlib.sha256(blob).hexdigest()
    tensors_sha = tensors_sha256(tensors)
    info = {
        "format": ADAPTER_FORMAT,
        "method": method.name,
        "params": method.hparams(),
        "base_model": {
            "key": base_identity_key(model),
            "spec": model.identity.spec,
            "identity": base_identity(model),
        },
        "train": asdict(cfg) if cfg is not None else None,
        "classnames": list(classnames),
        "classnames_sha256": sha256_json(list(classnames)),
        "split_file": str(split_file) if split_file else None,
        "metrics": metrics or {},
        "weights_sha256": weights_sha,  # of the file (integrity, checked on load)
        "tensors_sha256": tensors_sha,  # of the tensors (identity: the file's header order varies)
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "environment": environment_info(getattr(model, "device", None)),  # the record results carry
        **(extra or {}),
    }
    info["adapter_key"] = sha256_json(
        {"tensors": tensors_sha, "method": info["method"], "params": info["params"]}
    )
    atomic_write_json(out / ADAPTER_JSON, info)
    return out


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over sorted names, dtypes, shapes and raw bytes: the same tensors give the same
    value whatever order a serialiser writes them (or their metadata) in."""
    import hashlib

    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def read_adapter_info(adapter_dir: str | os.PathLike) -> dict[str, Any]:
    d = Path(adapter_dir)
    p = d / ADAPTER_JSON
    if not p.is_file():
        raise AdapterError(
            f"{d} is not an adapter artifact: {ADAPTER_JSON} is missing (train one with `vlmood fit METHOD`)"
        )
    try:
        info = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise AdapterError(f"{p}: invalid JSON ({e})") from e
    if not isinstance(info, dict) or info.get("format") != ADAPTER_FORMAT:
        raise AdapterError(f"{p}: not a {ADAPTER_FORMAT} file")
    if not (d / ADAPTER_WEIGHTS).is_file():
        raise AdapterError(f"{d}: {ADAPTER_WEIGHTS} is missing")
    return info


def load_adapter(adapter_dir: str | os.PathLike, model, check_model: bool = True) -> Adapter:
    """Load an adapter artifact onto ``model`` (its base model). Raises AdapterMismatchError when
    the artifact was trained on another base model, AdapterError when it is malformed."""
    from safetensors.torch import load_file

    d = Path(adapter_dir)
    info = read_adapter_info(d)
    base = info.get("base_model", {})
    if check_model and base.get("key") != base_identity_key(model):
        mine = base_identity(model)
        theirs = base.get("identity", {})
        diff = sorted(k for k in set(mine) | set(theirs) if k != "spec" and mine.get(k) != theirs.get(k))
        raise AdapterMismatchError(
            f"adapter {d} ({info.get('method')}) was trained on base model {base.get('spec')!r} "
            f"(key {str(base.get('key'))[:12]}), but the model given is {model.identity.spec!r} "
            f"(key {base_identity_key(model)[:12]}); they differ in {', '.join(diff) or 'identity'}. "
            f"Load the adapter with the model it was trained on (--model {base.get('spec')})."
        )
    cls = METHODS.get(info["method"])
    from vlmood.utils import sha256_file

    retrain = (
        f"delete {d} and train the adapter again with `vlmood fit` (`vlmood study` retrains what is missing)"
    )
    if info.get("weights_sha256") and sha256_file(d / ADAPTER_WEIGHTS) != info["weights_sha256"]:
        raise AdapterError(
            f"{d / ADAPTER_WEIGHTS} does not match the sha256 in {ADAPTER_JSON}: the file was changed "
            f"or is corrupt; {retrain}"
        )
    try:
        tensors = load_file(str(d / ADAPTER_WEIGHTS), device="cpu")
    except Exception as e:  # a truncated or foreign file
        raise AdapterError(
            f"{d / ADAPTER_WEIGHTS} is not a readable safetensors file ({e}); {retrain}"
        ) from e
    verify_adapter_tensors(d, info, tensors)
    adapter = cls.build_adapter(model, info, tensors)
    adapter.path = str(d)
    return adapter


def verify_adapter_tensors(d: Path, info: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """The loaded tensors are the ones the artifact names: their hash (``tensors_sha256``) and the
    adapter key (tensors + method + params) are recomputed and compared with ``adapter.json``, so
    an edited weights file or edited parameters are refused instead of credited to the original
    adapter key."""
    retrain = f"delete {d} and train the adapter again with `vlmood fit`"
    want = info.get("tensors_sha256")
    if not want or not info.get("adapter_key"):
        missing = "tensors_sha256" if not want else "adapter_key"
        raise AdapterError(
            f"{d / ADAPTER_JSON} has no {missing}, so the tensors in {ADAPTER_WEIGHTS} cannot be "
            f"checked against the adapter they claim to be; {retrain}"
        )
    have = tensors_sha256(tensors)
    if have != want:
        raise AdapterError(
            f"{d / ADAPTER_WEIGHTS}: its tensors hash to {have[:12]}, but {ADAPTER_JSON} records "
            f"{str(want)[:12]}: the weights were changed after training; {retrain}"
        )
    key = sha256_json({"tensors": have, "method": info.get("method"), "params": info.get("params")})
    if key != info["adapter_key"]:
        raise AdapterError(
            f"{d / ADAPTER_JSON}: its method or params do not give its adapter_key "
            f"{str(info['adapter_key'])[:12]} (they were edited after training); {retrain}"
        )


def check_shots(shots: Any) -> int | None:
    """``shots`` is None (all images) or an integer >= 1."""
    if shots is None:
        return None
    if isinstance(shots, bool) or not isinstance(shots, int | np.integer) or shots < 1:
        raise UsageError(
            f"shots must be an integer >= 1 (k images per class), got {shots!r}; "
            f"leave it out to train on every image"
        )
    return int(shots)


def _check_run(cfg: TrainConfig, model=None, world_size: int | None = None) -> tuple[TrainConfig, int, int]:
    """(config with the model's precision, per-rank batch, world size); UsageError when a setting
    cannot run."""
    from vlmood.train.engine import rank_batch_size

    cfg.check()
    w = D.world_size() if world_size is None else int(world_size)
    per_rank = rank_batch_size(cfg, w)
    if model is not None:
        prec = str(model.identity.precision)
        if cfg.precision not in ("fp32", prec):
            raise UsageError(
                f"training precision {cfg.precision} differs from the model's precision {prec}: the "
                f"model's forward runs in its own precision; load the model with precision={cfg.precision!r} "
                f"(--precision {cfg.precision})"
            )
        if prec == "fp16" and torch.device(model.device).type != "cuda":
            raise UsageError("precision fp16 needs a CUDA device; use --precision bf16 or fp32 on the CPU")
        if cfg.precision != prec:
            cfg = dataclasses.replace(cfg, precision=prec)
    return cfg, per_rank, w


def resolve_train_config(
    cfg: TrainConfig, n: int, model=None, world_size: int | None = None
) -> tuple[TrainConfig, dict[str, Any]]:
    """The one place a method's training settings are resolved against how the run executes.

    - **batch**: ``cfg.batch_size`` is the global batch; each of the W ranks takes
      ``batch_size / W`` (refused when W does not divide it);
    - **warmup** given in epochs (``extra["warmup_epochs"]``, CoOp) or as a fraction of all
      steps (``extra["warmup_frac"]``, PLP) becomes ``warmup_steps`` from the optimiser steps of
      an epoch at the global batch, so one warmup epoch stays one epoch under DDP;
    - **precision**: the model's (``--precision``: what its forward runs in) becomes the
      engine's autocast precision; a config asking for another one is refused.

    Returns the resolved config and what ran (``run`` in adapter.json): world size, per-rank
    and global batch, steps per epoch, warmup steps, precision, device.
    """
    from vlmood.train.engine import steps_per_epoch

    cfg, per_rank, w = _check_run(cfg, model, world_size)
    steps = max(1, steps_per_epoch(n, cfg))
    if cfg.extra.get("warmup_epochs") and not cfg.warmup_steps:
        cfg = dataclasses.replace(cfg, warmup_steps=int(cfg.extra["warmup_epochs"]) * steps)
    if cfg.extra.get("warmup_frac") and not cfg.warmup_steps:
        cfg = dataclasses.replace(
            cfg, warmup_steps=int(round(float(cfg.extra["warmup_frac"]) * steps * cfg.epochs))
        )
    if cfg.warmup_steps >= steps * cfg.epochs:
        log.warning(
            "warmup (%d steps) covers the whole run of %d steps: the schedule never reaches lr %g; "
            "train more epochs or set warmup_steps",
            cfg.warmup_steps,
            steps * cfg.epochs,
            cfg.lr,
        )
    run = {
        "world_size": w,
        "per_rank_batch": per_rank,
        "global_batch": cfg.batch_size,
        "steps_per_epoch": steps,
        "warmup_steps": cfg.warmup_steps,
        "precision": cfg.precision,
        "device": str(model.device) if model is not None else None,
    }
    return cfg, run


# ---------------------------------------------------------------------------------------------- fit
def _share_features(fs, kinds: Sequence[str]) -> dict[str, np.ndarray]:
    """Every rank's copy of the training features. Under torchrun without a shared file system
    only rank 0 sees the cache entry; it then sends the (few-shot sized) arrays to the others."""
    local = bool(getattr(fs, "local", True))
    if not D.is_initialized() or D.world_size() == 1:
        return {k: fs.get(k) for k in kinds}
    flags = D.gather_objects(local)
    need = D.broadcast_object(not all(flags) if flags is not None else None)
    if not need:
        return {k: fs.get(k) for k in kinds}
    arrays = {k: np.asarray(fs.get(k)) for k in kinds} if D.is_main() else None
    return D.broadcast_object(arrays)


def prepare_data(
    method: Method,
    model,
    data: TrainData | ImageSource,
    out_dir: Path,
    shots: int | None = None,
    seed: int = 0,
    split_file: str | os.PathLike | None = None,
    classnames: Sequence[str] | None = None,
    cache_root: str | os.PathLike | None = None,
    progress: bool = True,
    extract_options: ExtractOptions | Mapping[str, Any] | None = None,
    val_fraction: float | None = None,
) -> TrainData:
    """Turn an image source into :class:`TrainData`: few-shot sampling (split file written to
    ``out_dir/split.json`` by rank 0) or a given split file, then cached features of
    ``method.kinds`` (unless the method runs the image encoder itself). ``val_fraction``: a
    validation split drawn from the images training does not use (``TrainData.val_source``,
    ``out_dir/val_split.json``; see :mod:`vlmood.train.validation`). ``extract_options``:
    :class:`~vlmood.features.options.ExtractOptions` (or a dict of its fields; ``cache_root``
    given here overrides its cache, ``progress=False`` its bars); they also reach what a method
    that reads images encodes (UEO, through ``TrainData.extract``). With ``skip_corrupt``
    unreadable training images are dropped (and listed in ``meta``), for methods that read images
    each step too."""
    shots = check_shots(shots)
    xo = ExtractOptions.of(extract_options, cache_root=cache_root, progress=False if not progress else None)
    if isinstance(data, TrainData):
        if shots or split_file or val_fraction:
            raise UsageError(
                "shots/split_file/val_fraction apply to an image source, not to prepared TrainData"
            )
        own = data.extract
        x = xo if extract_options is not None and own == ExtractOptions() else own
        x = x.replace(cache_root=cache_root) if x.cache_root is None else x
        return data if x is own else dataclasses.replace(data, extract=x)
    if not isinstance(data, ImageSource):
        raise TypeError(f"training data must be an ImageSource or TrainData, not {type(data).__name__}")
    source = data
    source_fp = source.fingerprint(xo.fingerprint)  # identity of the data drawn from
    names = list(classnames or source.classnames or [])
    if not names:
        raise DataError(f"dataset {source.name!r} has no class names; pass classnames")
    split_path: str | None = None
    full, used = source, None  # the training split; the images training takes from it (None: all)
    if split_file:
        from vlmood.data.fewshot import load_split

        used = idx = load_split(split_file, source)
        split_path = str(Path(split_file).absolute())
        source = source.subset(idx)
    elif shots:
        from vlmood.data.fewshot import few_shot_indices, save_split

        used = idx = few_shot_indices(source.labels, shots, seed, names)
        p = out_dir / "split.json"
        if D.is_main():  # the one writer; every rank draws the same indices
            save_split(p, source, idx, {"seed": seed, "shots": shots})
        split_path = str(p.absolute())
        source = source.subset(idx, name=f"{source.name}-{shots}shot-seed{seed}")
    val_source, val_meta = None, None
    if val_fraction:
        from vlmood.data.fewshot import save_split
        from vlmood.train.validation import validation_indices

        val_idx = validation_indices(full.labels, val_fraction, seed, used)
        if used is None:  # training on every image: the validation images are held out of it
            held = set(val_idx)
            idx = [i for i in range(len(full)) if i not in held]
            p = out_dir / "split.json"
            if D.is_main():
                save_split(p, full, idx, {"seed": seed, "shots": None, "validation": "val_split.json"})
            split_path = str(p.absolute())
            source = full.subset(idx, name=f"{full.name}-train-seed{seed}")
        vp = out_dir / "val_split.json"
        drawn = "held out of training" if used is None else "from the images the training split leaves out"
        if D.is_main():
            save_split(vp, full, val_idx, {"seed": seed, "shots": None, "val_fraction": val_fraction})
        val_source = full.subset(val_idx, name=f"{full.name}-val-seed{seed}")
        val_meta = {
            "fraction": val_fraction,
            "seed": seed,
            "n": len(val_idx),
            "drawn": drawn,
            "split_file": str(vp.absolute()),
        }
    labels = np.asarray(source.labels, dtype=np.int64)
    if method.needs_labels and (labels < 0).any():
        raise DataError(
            f"method {method.name!r} needs labelled images; {int((labels < 0).sum())} have label -1"
        )
    features: dict[str, np.ndarray] = {}
    kinds = tuple(method.kinds)
    skipped: list = []
    encode = kinds and (not method.needs_images or method.images_need_features or xo.skip_corrupt)
    if encode:
        from vlmood.features.extract import extract_features

        fs = extract_features(model, source, kinds, options=xo)
        valid, skipped = np.asarray(fs.valid), list(fs.skipped) if not fs.valid.all() else []
        if D.is_initialized() and D.world_size() > 1:  # rank 0 read the entry: its view holds for all
            valid, skipped = D.broadcast_object((valid, skipped) if D.is_main() else None)
        if not valid.all():  # only with skip_corrupt (extraction raises otherwise)
            keep = np.flatnonzero(valid)
            source = source.subset(keep, name=source.name)
            labels = labels[keep]
            log.warning("%s: training without %d unreadable images", source.name, len(skipped))
        if not method.needs_images or method.images_need_features:
            features = _share_features(fs, kinds)  # readable images only (FeatureSet.get)
    return TrainData(
        names,
        labels,
        features,
        source=source,
        split_file=split_path,
        meta={
            "dataset": source.name,
            "n": len(source),
            "shots": shots,
            "seed": seed,
            "source_fingerprint": source_fp,
            **({"skipped": skipped} if skipped else {}),
            **({"validation": val_meta} if val_meta else {}),
        },
        extract=xo,
        val_source=val_source,
    )


def train_config(
    method: Method,
    *,
    epochs: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    seed: int | None = None,
    num_workers: int | None = None,
    tensorboard: bool | None = None,
    overrides: Mapping[str, Any] | None = None,
    mlflow: bool | None = None,
    val_every: int | None = None,
) -> TrainConfig:
    """The method's paper settings (``method.default_config``) with what was given instead (None:
    keep the paper's), checked (UsageError): what ``vlmood fit`` and ``vlmood.fit`` train with.
    ``tensorboard``/``mlflow``: also log to TensorBoard / MLflow; ``val_every``: validate every N
    epochs (see :func:`fit_method`'s ``val_fraction`` and ``val_sets``)."""
    given = {"epochs": epochs, "batch_size": batch_size, "lr": lr}
    cfg = method.default_config(
        **{**dict(overrides or {}), **{k: v for k, v in given.items() if v is not None}}
    )
    if seed is not None:
        cfg.seed = seed
    if num_workers is not None:
        cfg.num_workers = num_workers  # the training DataLoader (images each step: UEO, augmentation)
    if tensorboard is not None:
        cfg.tensorboard = bool(tensorboard)
    if mlflow is not None:
        cfg.mlflow = bool(mlflow)
    if val_every is not None:
        cfg.val_every = val_every
    cfg.check()
    return cfg


def fit_method(
    name: str,
    model,
    data: TrainData | ImageSource,
    out_dir: str | os.PathLike,
    cfg: TrainConfig | None = None,
    params: dict[str, Any] | None = None,
    *,
    shots: int | None = None,
    seed: int | None = None,
    split_file: str | os.PathLike | None = None,
    classnames: Sequence[str] | None = None,
    cache_root: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    resume: bool = False,
    extract_options: ExtractOptions | Mapping[str, Any] | None = None,
    reuse: bool = False,
    label: str | None = None,
    val_fraction: float | None = None,
    val_sets: Mapping[str, ImageSource] | Sequence[tuple[str, ImageSource]] | None = None,
) -> Path:
    """Train method ``name`` and write its adapter artifact to ``out_dir``; returns ``out_dir``.

    adapter.json carries ``fit_identity`` (:func:`fit_identity`: method, parameters, training
    settings, shots, seed, class names, training data and base model, with one key). With
    ``reuse=True`` an ``out_dir`` holding an adapter of the same identity is returned without any
    work, one of another identity is refused (the message lists what differs), and a killed
    training (a checkpoint, no adapter yet) resumes. ``label`` names the adapter in reports
    (adapter.json ``label``; not part of its identity).

    ``cfg`` defaults to the method's paper settings (``create_method(name).default_config()``);
    ``seed`` defaults to ``cfg.seed`` and drives the few-shot sampling. The engine's checkpoint,
    metrics log and config live in ``out_dir/train`` (``resume=True`` continues them).

    Under torchrun (process group initialised, see ``vlmood.distributed.init_distributed``)
    every rank trains its share of each global batch ``cfg.batch_size`` with synchronised
    gradients, and rank 0 alone writes into ``out_dir``. Settings are checked before any work
    (:class:`~vlmood.errors.UsageError`): method parameters, epochs/batch size/lr, shots, an
    ``out_dir`` that is a file, a batch the world size does not divide.

    Validation (:mod:`vlmood.train.validation`): ``val_fraction`` holds a seeded, per-class
    part of the training split out of training (drawn from the images a k-shot split leaves out,
    so the k-shot training set does not change; part of the fit identity), ``val_sets`` adds
    labelled sets of the training classes (domain shift: ``{name: ImageSource}``), and every
    ``cfg.val_every`` epochs and after the last the adapter as trained so far is scored on them:
    ``val/id_accuracy``, ``val/<name>_accuracy`` in ``out_dir/train/metrics.jsonl`` (and
    TensorBoard / MLflow with ``cfg.tensorboard`` / ``cfg.mlflow``). It never changes what trains.
    """
    from vlmood.train.validation import (
        check_val_fraction,
        check_val_sets,
        check_validates,
        resolve_val_every,
    )

    method = create_method(name, **(params or {}))
    cfg = cfg if cfg is not None else method.default_config()
    extract_options = ExtractOptions.of(extract_options, cache_root=cache_root)
    out = check_folder_path(out_dir)  # the adapter directory: not a file
    shots = check_shots(shots)
    val_fraction = check_val_fraction(val_fraction)
    val_sets = check_val_sets(val_sets)
    if resolve_val_every(cfg.val_every, val_fraction, val_sets):  # asked with nothing to validate: refused
        check_validates(method)
    _check_run(cfg, model)  # settings, batch / world size, precision: before any work
    seed = cfg.seed if seed is None else seed
    ident = fit_identity(
        method, cfg, model, data, shots, seed, classnames, extract_options, val_fraction=val_fraction
    )
    if reuse and D.broadcast_object(_same_adapter(out, ident) if D.is_main() else None):
        log.info("%s: reusing the adapter trained with the same settings", out)
        return out
    checkpoint = out / "train" / CHECKPOINT_NAME
    has_checkpoint = D.broadcast_object(checkpoint.is_file() if D.is_main() else None)
    if resume and not has_checkpoint:
        log.info("%s holds no checkpoint yet (stopped before the first epoch ended): starting afresh", out)
    resume = (resume or reuse) and has_checkpoint  # with reuse, a killed training continues
    created = D.is_main() and not out.exists()
    if D.is_main():
        _check_training_identity(out, ident)  # a checkpoint of other settings or data is refused
        out.mkdir(parents=True, exist_ok=True)
    try:
        if D.is_main():
            atomic_write_json(out / "train" / TRAIN_IDENTITY, ident)
        td = prepare_data(
            method,
            model,
            data,
            out,
            shots,
            seed,
            split_file,
            classnames,
            cache_root,
            progress,
            extract_options,
            val_fraction=val_fraction,
        )
        if method.needs_images and td.source is None:
            raise DataError(
                f"method {method.name!r} runs the image encoder while training; give it an image source"
            )
        dev = torch.device(device) if device is not None else model.device
        cfg, run = resolve_train_config(cfg, len(td), model)
        run["device"] = str(dev)
        validator = _validator(method, model, td, val_sets, cfg)
        t0 = time.perf_counter()
        from vlmood.train.validation import validating

        with validating(validator):
            metrics = method.fit(model, td, cfg, out / "train", dev, progress=progress, resume=resume)
        metrics = {"train_s": time.perf_counter() - t0, **(metrics or {})}
        if validator is not None and validator.calls == 0 and D.is_main():
            log.warning("method %r did not train with the engine: nothing was validated", method.name)
        if D.is_main():
            save_adapter(
                out,
                method,
                model,
                method.effective_config if getattr(method, "effective_config", None) else cfg,
                td.classnames,
                td.split_file,
                metrics,
                extra={
                    "data": td.meta,
                    "run": run,
                    "fit_identity": ident,
                    **({"label": label} if label else {}),
                },
            )
    except BaseException:
        # a run that stopped before its first checkpoint leaves nothing (a rerun starts afresh);
        # with a checkpoint the folder stays for --resume
        if created and not checkpoint.exists():
            shutil.rmtree(out, ignore_errors=True)
        raise
    D.barrier()
    return out


def _validator(method: Method, model, td: TrainData, val_sets: dict[str, ImageSource], cfg: TrainConfig):
    """The engine's validation callable for this fit (None without validation); records the
    validation in ``td.meta["validation"]`` (adapter.json ``data.validation``)."""
    from vlmood.train.validation import Validator

    sets = {**({"id": td.val_source} if td.val_source is not None else {}), **val_sets}
    if not sets:
        return None
    rec = dict(td.meta.get("validation") or {})
    rec["every"] = cfg.val_every
    if val_sets:
        rec["sets"] = {k: {"name": s.name, "origin": str(s.origin), "n": len(s)} for k, s in val_sets.items()}
    td.meta["validation"] = rec
    if not cfg.val_every:
        return None
    return Validator.prepare(method, model, td.classnames, sets, td.extract)


def _data_fingerprint(data: TrainData | ImageSource, extract_options: ExtractOptions) -> str:
    source = data if isinstance(data, ImageSource) else data.source
    if source is not None:
        return source.fingerprint(extract_options.fingerprint)
    h = hashlib.sha256(np.ascontiguousarray(data.labels).tobytes())
    for kind in sorted(data.features):
        h.update(kind.encode())
        h.update(np.ascontiguousarray(data.features[kind]).tobytes())
    return h.hexdigest()


def fit_identity(
    method: Method,
    cfg: TrainConfig,
    model,
    data: TrainData | ImageSource,
    shots: int | None,
    seed: int,
    classnames: Sequence[str] | None,
    extract_options: ExtractOptions,
    val_fraction: float | None = None,
) -> dict[str, Any]:
    """What decides a trained adapter, and its key (``sha256_json`` of the rest): the method and
    its parameters, the training settings as asked (run-only ones such as workers, logging and
    how often to validate left out), shots, seed, class names, the training data's fingerprint,
    the base model and, when one is held out, the validation fraction."""
    train = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RUN_ONLY_SETTINGS}
    train["seed"] = seed
    names = classnames if classnames is not None else getattr(data, "classnames", None)
    ident = json.loads(
        json.dumps(
            {
                "method": method.name,
                "params": dataclasses.asdict(method.params),
                "train": train,
                "shots": shots,
                "classnames": sha256_json(list(names or [])),
                "data": _data_fingerprint(data, extract_options),
                "base_model": model.identity.key,
                **({"val_fraction": val_fraction} if val_fraction else {}),
            },
            default=str,
        )
    )
    return {"key": sha256_json(ident), **ident}


#: the fit identity of the training in ``OUT/train`` (a resumed checkpoint must match it)
TRAIN_IDENTITY = "fit_identity.json"


def _check_training_identity(out: Path, ident: dict[str, Any]) -> None:
    """Refuse to continue a training (its checkpoints, LP-FT's first phase included) that was
    started with other settings or data than ``ident``."""
    f = out / "train" / TRAIN_IDENTITY
    if not f.is_file():
        return
    try:
        have = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        have = {}
    if have.get("key") != ident["key"]:
        from vlmood.train.engine import ResumeError

        raise ResumeError(
            f"{out / 'train'} holds an interrupted training with different training settings or data "
            f"than asked ({_identity_diff(have, ident)}); use another --out, or delete {out} to start afresh"
        )


def _identity_diff(have: dict[str, Any], ident: dict[str, Any]) -> str:
    diff = []
    for k, w in ident.items():
        h = have.get(k)
        if k == "key" or h == w:
            continue
        if isinstance(h, dict) and isinstance(w, dict):
            diff += [
                f"{k}.{s}: {h.get(s)!r} -> {w.get(s)!r}"
                for s in sorted(set(h) | set(w))
                if h.get(s) != w.get(s)
            ]
        else:
            diff.append(
                f"{k}: {h!r} -> {w!r}" if k not in ("data", "classnames", "base_model") else f"{k} differs"
            )
    return "; ".join(diff) or "unreadable identity file"


def _same_adapter(out: Path, ident: dict[str, Any]) -> bool:
    """True when ``out`` holds an adapter of identity ``ident``; False when it holds none; an
    adapter of another identity is refused with what differs (UsageError)."""
    if not (out / "adapter.json").is_file():
        return False
    have = read_adapter_info(out).get("fit_identity")
    if have is None:
        raise UsageError(
            f"{out} holds an adapter written without a fit identity (an older vlmood); delete that folder "
            "to train it again, or use another --out"
        )
    if have.get("key") == ident["key"]:
        return True
    raise UsageError(
        f"{out} holds an adapter trained with other settings than asked ({_identity_diff(have, ident)}); "
        "use another --out or delete that folder"
    )


def run_engine(
    module: torch.nn.Module,
    dataset: Dataset,
    loss_fn,
    cfg: TrainConfig,
    out_dir: Path,
    device,
    progress: bool,
    resume: bool,
    param_groups: list[dict] | None = None,
) -> list[dict[str, Any]]:
    """The shared engine (``vlmood.train.engine.Trainer``) with the method's module and loss; inside
    :func:`fit_method` with validation asked, it validates every ``cfg.val_every`` epochs."""
    from vlmood.train.engine import Trainer
    from vlmood.train.validation import active_validator

    trainer = Trainer(
        module,
        dataset,
        loss_fn,
        cfg,
        out_dir,
        device=device,
        progress=progress,
        param_groups=param_groups,
        collate_fn=batch_collate if isinstance(dataset, ArrayDataset) else None,
        validate=active_validator() if cfg.val_every else None,
    )
    return trainer.fit(resume=resume)


def epoch_summary(history: list[dict[str, Any]]) -> dict[str, Any]:
    if not history:
        return {}
    keys = [
        k
        for k, v in history[-1].items()
        if isinstance(v, float) and k not in ("time_s", "samples_per_s", "val/time_s")
    ]
    return {
        "epochs": len(history),
        "first": {k: history[0].get(k) for k in keys},
        "last": {k: history[-1].get(k) for k in keys},
    }


@dataclass
class _Frozen:
    """Remember and restore ``requires_grad`` flags of a module."""

    module: torch.nn.Module
    flags: dict[str, bool] = field(default_factory=dict)

    def __enter__(self) -> _Frozen:
        self.flags = {n: p.requires_grad for n, p in self.module.named_parameters()}
        for p in self.module.parameters():
            p.requires_grad_(False)
        return self

    def __exit__(self, *exc) -> None:
        for n, p in self.module.named_parameters():
            p.requires_grad_(self.flags.get(n, True))


def frozen(module: torch.nn.Module) -> _Frozen:
    """``with frozen(model.torch_module): ...`` freezes every parameter, restoring flags after."""
    return _Frozen(module)
