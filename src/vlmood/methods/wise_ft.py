"""WiSE-FT: weight-space ensembles of a zero-shot and a fine-tuned model (methods.md 8).

``theta_alpha = (1 - alpha) theta_zeroshot + alpha theta_finetuned``, key by key over every
tensor of a full fine-tune adapter (``ft``, ``lp-ft``, ``flyp``, ``cma``, or another WiSE-FT
adapter): its ``model.*`` tensors against the base model's own weights, its head against the
zero-shot head built from the same templates (:func:`~vlmood.methods.finetune.zero_shot_head`).
``alpha = 0`` gives the base weights and ``alpha = 1`` the fine-tuned ones exactly (copied, not
computed). Nothing trains: ``vlmood fit wise-ft --param endpoint=DIR --param alpha=0.5`` writes
one adapter (of the same form as the endpoint's, loaded the same way); :func:`wise_ft_adapters`
writes one per alpha of a list. The endpoint must have been fine-tuned from the given base model
and for the same class names.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vlmood.errors import UsageError
from vlmood.methods.base import (
    METHODS,
    AdapterError,
    AdapterMismatchError,
    Method,
    TrainData,
    base_identity_key,
    read_adapter_info,
    register_method,
    verify_adapter_tensors,
)
from vlmood.methods.finetune import (
    HEAD_KEY,
    MODEL_PREFIX,
    FullFinetune,
    FullFinetuneAdapter,
    check_base_model,
    zero_shot_head,
)
from vlmood.train.engine import TrainConfig


def check_alpha(alpha: Any) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0.0 <= float(alpha) <= 1.0:
        raise UsageError(
            f"WiSE-FT alpha must be a number in [0, 1] (0: zero-shot, 1: fine-tuned), got {alpha!r}"
        )
    return float(alpha)


def interpolate(
    zero_shot: dict[str, torch.Tensor], finetuned: dict[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """``(1 - alpha) zero_shot[k] + alpha finetuned[k]`` for every key of ``finetuned`` (float32);
    the endpoints are copied exactly at alpha 0 and 1."""
    alpha = check_alpha(alpha)
    if set(zero_shot) != set(finetuned):
        raise ValueError(
            f"WiSE-FT endpoints hold different tensors: {sorted(set(zero_shot) ^ set(finetuned))[:5]}"
        )
    out = {}
    for k, ft in finetuned.items():
        zs = zero_shot[k]
        if zs.shape != ft.shape:
            raise ValueError(f"WiSE-FT tensor {k!r}: shapes {tuple(zs.shape)} and {tuple(ft.shape)} differ")
        if alpha == 0.0:
            out[k] = zs.detach().float().clone()
        elif alpha == 1.0:
            out[k] = ft.detach().float().clone()
        else:
            out[k] = (1.0 - alpha) * zs.detach().float() + alpha * ft.detach().float()
    return out


def read_endpoint(path: str | os.PathLike, model) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(adapter.json, tensors) of a full fine-tune adapter made from ``model``'s base weights;
    refuses other adapter kinds, another base model and edited files."""
    from safetensors.torch import load_file

    from vlmood.methods.base import ADAPTER_WEIGHTS
    from vlmood.utils import sha256_file

    d = Path(path)
    if not d.is_dir():
        raise AdapterError(
            f"WiSE-FT endpoint {d} does not exist; pass the folder of a full fine-tune adapter "
            f"(ft, lp-ft, flyp, cma, arf, or another wise-ft) of the same base model"
        )
    info = read_adapter_info(d)
    cls = METHODS.get(info["method"]) if info.get("method") in METHODS else None
    if cls is None or not issubclass(cls, FullFinetune | WiseFT):
        raise UsageError(
            f"WiSE-FT endpoint {d} is a {info.get('method')} adapter; it needs a full fine-tune "
            f"(ft, lp-ft, flyp, cma, arf, or another wise-ft) of the same base model"
        )
    base = info.get("base_model", {})
    if base.get("key") != base_identity_key(model):
        raise AdapterMismatchError(
            f"WiSE-FT endpoint {d} was fine-tuned from base model {base.get('spec')!r} "
            f"(key {str(base.get('key'))[:12]}), not from the model given {model.identity.spec!r} "
            f"(key {base_identity_key(model)[:12]}); interpolate with the model it was trained from"
        )
    if info.get("weights_sha256") and sha256_file(d / ADAPTER_WEIGHTS) != info["weights_sha256"]:
        raise AdapterError(
            f"{d / ADAPTER_WEIGHTS} does not match the sha256 in adapter.json (changed or corrupt)"
        )
    try:
        tensors = load_file(str(d / ADAPTER_WEIGHTS), device="cpu")
    except Exception as e:
        raise AdapterError(f"{d / ADAPTER_WEIGHTS} is not a readable safetensors file ({e})") from e
    verify_adapter_tensors(d, info, tensors)
    return info, tensors


def zero_shot_tensors(model, info: dict[str, Any], keys: Sequence[str]) -> dict[str, torch.Tensor]:
    """The zero-shot values of an endpoint's tensors: the base model's own weights and the
    zero-shot head of the endpoint's class names and templates."""
    own = dict(model.torch_module.named_parameters())
    out = {}
    for k in keys:
        if k == HEAD_KEY:
            out[k] = zero_shot_head(
                model, list(info["classnames"]), list(info["params"]["caption_templates"])
            )
        elif k.startswith(MODEL_PREFIX) and k[len(MODEL_PREFIX) :] in own:
            out[k] = own[k[len(MODEL_PREFIX) :]].detach().float().cpu().clone()
        else:
            raise AdapterError(f"WiSE-FT endpoint tensor {k!r} is not a parameter of the model")
    return out


def parse_alphas(text: Any) -> list[float]:
    """``"0,0.25,0.5"`` (or a list of numbers) -> checked alphas, in order, no repeats; ``""`` -> []."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return []
    items = (
        text.split(",") if isinstance(text, str) else list(text) if isinstance(text, list | tuple) else [text]
    )
    out = []
    for item in items:
        if isinstance(item, str):
            try:
                item = float(item.strip())
            except ValueError:
                raise UsageError(
                    f"WiSE-FT alphas must be numbers in [0, 1] separated by commas (e.g. 0,0.5,1), got {text!r}"
                ) from None
        out.append(check_alpha(item))
    dup = sorted({a for a in out if out.count(a) > 1})
    if dup:
        raise UsageError(f"WiSE-FT alphas repeated: {dup}")
    return out


@dataclass
class WiseFTParams:
    endpoint: str = ""  # a full fine-tune adapter directory (ft, lp-ft, flyp, cma, arf) of this base model
    alpha: float | None = None  # 0: zero-shot weights, 1: the endpoint's (default 0.5)
    # several alphas, e.g. "0,0.25,0.5,0.75,1": one adapter each (vlmood fit: OUT/alpha<a>/;
    # vlmood study: one row each, the endpoint given as a method of the study)
    alphas: str = ""


@register_method("wise-ft")
class WiseFT(Method):
    """WiSE-FT: (1 - alpha) zero-shot + alpha fine-tuned weights, key by key (no training)."""

    Params = WiseFTParams
    kinds: tuple[str, ...] = ()
    needs_labels = False
    adapts_image_encoder = True

    def validate(self) -> None:
        self.alphas = parse_alphas(self.params.alphas)
        if self.alphas and self.params.alpha is not None:
            raise UsageError(
                "method 'wise-ft': give alpha=A (one adapter) or alphas=A,B,... (one each), not both"
            )
        self.alpha = 0.5 if self.params.alpha is None else check_alpha(self.params.alpha)
        if not str(self.params.endpoint).strip():
            raise UsageError(
                "method 'wise-ft' needs the fine-tuned endpoint: --param endpoint=ADAPTER_DIR "
                "(an ft, lp-ft, flyp, cma or arf adapter of the same base model)"
            )

    def default_config(self, **overrides: Any) -> TrainConfig:
        base = dict(epochs=1, batch_size=1, drop_last=False)  # nothing trains
        base.update(overrides)
        return TrainConfig(**base)

    def fit(self, model, data: TrainData, cfg, out_dir, device, progress=True, resume=False):
        if self.alphas:
            raise UsageError(
                "method 'wise-ft' with alphas writes one adapter per alpha: run it through `vlmood fit` "
                "(OUT/alpha<a>/ each), `vlmood study` or vlmood.methods.wise_ft.wise_ft_adapters; "
                "for one adapter give alpha=A"
            )
        check_base_model(model, "WiSE-FT")
        info, ft = read_endpoint(self.params.endpoint, model)
        if list(info["classnames"]) != list(data.classnames):
            raise UsageError(
                f"WiSE-FT endpoint {self.params.endpoint} was fine-tuned for {len(info['classnames'])} other "
                f"class names than the {len(data.classnames)} given; use the endpoint's class names"
            )
        self.endpoint_info = info
        self.merged = interpolate(zero_shot_tensors(model, info, list(ft)), ft, self.alpha)
        return {"alpha": self.alpha, "endpoint_key": info["adapter_key"], "tensors": len(self.merged)}

    def tensors(self) -> dict[str, torch.Tensor]:
        return self.merged

    def hparams(self) -> dict[str, Any]:
        d = super().hparams()
        info = getattr(self, "endpoint_info", None)
        if info is not None:
            d["endpoint_method"] = info["method"]
            d["endpoint_key"] = info["adapter_key"]
            d["caption_templates"] = list(info["params"]["caption_templates"])
        return d

    @classmethod
    def build_adapter(cls, model, info, tensors):
        return FullFinetuneAdapter(model, info, tensors)


def wise_ft_adapters(
    model,
    endpoint: str | os.PathLike,
    alphas: Sequence[float],
    out_dir: str | os.PathLike,
    **fit_kwargs: Any,
) -> list[Path]:
    """One WiSE-FT adapter per alpha, ``out_dir/alpha<alpha>`` (e.g. ``alpha0.25``), each
    evaluable with ``vlmood eval --adapter``; returns their folders. Every alpha is checked
    before any is written."""
    from vlmood.methods.base import fit_method

    values = parse_alphas(list(alphas))
    if not values:
        raise UsageError("WiSE-FT needs at least one alpha in [0, 1]")
    info, _ = read_endpoint(endpoint, model)  # every check before any folder is written
    data = TrainData(list(info["classnames"]), [])
    out = Path(out_dir)
    return [
        fit_method(
            "wise-ft",
            model,
            data,
            out / f"alpha{a:g}",
            params={"endpoint": str(Path(endpoint).absolute()), "alpha": a},
            **fit_kwargs,
        )
        for a in values
    ]
