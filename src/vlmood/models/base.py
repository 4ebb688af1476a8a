"""The VLM adapter protocol every backbone backend implements, and the model identity.

Conventions:
- ``encode_image`` / ``encode_text`` return **L2-normalised** projected embeddings (float32 on
  return), so ``image @ text.T`` are unscaled cosine similarities.
- ``encode_image_features`` returns the requested feature kinds in one forward pass:
  ``"image"`` (normalised projected global embedding, [B, D]), ``"preproj"`` (pooled feature
  before the projection, un-normalised, [B, W]) and ``"patch"`` (projected, normalised patch
  tokens, [B, P, D], GL-MCM style value-path local features where the backend supports it).
- ``logit_scale`` is the model's own (exp'd) scale, ~100 for CLIP.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from vlmood.errors import VlmoodError
from vlmood.utils import sha256_json

FEATURE_KINDS = ("image", "preproj", "patch")


@dataclass(frozen=True)
class PreprocessSpec:
    """What the image transform does; part of the model identity and of cache keys."""

    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"  # resize shortest side then center crop

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d


@dataclass(frozen=True)
class ModelIdentity:
    """Everything that decides what a model computes. One value used by the cache and results.

    ``weights`` is a pretrained tag, ``sha256:<hex>`` of a weights file, or ``random:<seed>``.
    """

    backend: str
    arch: str
    weights: str
    precision: str
    quick_gelu: bool
    preprocess: PreprocessSpec
    spec: str = ""  # the user's spec string (informational; not part of the key)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "arch": self.arch,
            "weights": self.weights,
            "precision": self.precision,
            "quick_gelu": self.quick_gelu,
            "preprocess": self.preprocess.to_dict(),
            "spec": self.spec,
            "extra": dict(self.extra),
        }

    def key_dict(self) -> dict[str, Any]:
        """The fields that change model outputs (the spec string is excluded)."""
        d = self.to_dict()
        d.pop("spec")
        return d

    @property
    def key(self) -> str:
        return sha256_json(self.key_dict())


class VLM(ABC):
    """Adapter over a CLIP-style model. Subclasses: open_clip and Hugging Face backends."""

    identity: ModelIdentity
    device: torch.device

    @property
    @abstractmethod
    def embed_dim(self) -> int: ...

    @property
    @abstractmethod
    def logit_scale(self) -> float:
        """exp of the learned logit scale (CLIP: ~100)."""

    @property
    @abstractmethod
    def preprocess(self) -> Callable[[Any], torch.Tensor]:
        """PIL image -> CHW float tensor (eval transform)."""

    @abstractmethod
    def tokenize(self, texts: Sequence[str]) -> torch.Tensor: ...

    @abstractmethod
    def encode_image_features(
        self, images: torch.Tensor, kinds: Sequence[str] = ("image",)
    ) -> dict[str, torch.Tensor]:
        """One forward pass returning the requested kinds (see module docstring)."""

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode_image_features(images, ("image",))["image"]

    @abstractmethod
    def encode_text(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Normalised text embeddings [N, D], float32, batched internally."""

    @property
    @abstractmethod
    def torch_module(self) -> torch.nn.Module:
        """The underlying nn.Module (for training and state dicts)."""

    def to(self, device: str | torch.device) -> VLM:
        self.device = torch.device(device)
        self.torch_module.to(self.device)
        return self

    def autocast(self):
        """Autocast context for this model's precision: bf16 autocast on CUDA and CPU, fp16 on
        CUDA only; fp32 runs without autocast. Weights stay float32 (mixed precision)."""
        prec = self.identity.precision
        if prec == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        if prec == "fp16":
            if self.device.type != "cuda":
                raise ValueError("precision fp16 needs a CUDA device; use bf16 or fp32 on the CPU")
            return torch.autocast("cuda", dtype=torch.float16)
        return torch.autocast(self.device.type, enabled=False)


class ModelLoadError(VlmoodError, RuntimeError):
    """A model could not be loaded; the message says what to pass instead."""
