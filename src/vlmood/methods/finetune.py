"""Full fine-tuning: FT, LP-FT, FLYP and CMA (methods.md 3 and 8).

- ``ft``: cross-entropy through a linear head ``logits = f @ W^T`` on the normalised image
  feature ``f``; ``W`` starts as the zero-shot class text features (template ensemble, see
  :func:`template_text_features`) times the model's logit scale, so training starts from CLIP's
  zero-shot logits. The image tower and the head train; the text tower and the logit scale stay.
  The head has no bias: it stays a set of class vectors in the text embedding space, so the
  adapter is a text head (:class:`~vlmood.eval.heads.TextHead`, class features ``W / s``)
  through which every score runs, NegLabel included, and whose logits at the model's scale are
  exactly the trained ones.
- ``lp-ft`` (Kumar et al.): phase 1 trains only that head on cached (frozen) image features,
  warm-started from the zero-shot head (``lp_epochs``, ``lp_lr``, AdamW without weight decay);
  phase 2 is ``ft`` starting from the phase-1 head. One adapter.
- ``flyp``: both towers and the logit scale train with the CLIP contrastive loss on
  (image, class caption) pairs (:func:`~vlmood.methods.losses.clip_contrastive_loss`). Each
  image's caption is its class name in one of the templates (drawn per sample and step when
  there are several). The learned scale is used as ``exp(min(logit_scale, ln 100))`` (CLIP's
  clamp at 100).
- ``cma``: FLYP's loss + ``lam/(2B) sum_k (L_img,k + L_txt,k)``
  (:func:`~vlmood.methods.losses.cma_loss`). ``lam`` has no default (the reference code's 0 turns
  CMA into FLYP without saying so): it must be given, ``> 0``, or ``0`` with
  ``allow_zero_lambda=true``.

Training settings default to FLYP's ImageNet recipe (methods.md 8; CMA uses the same):
AdamW lr 1e-5, weight decay 0.1, batch 512, 10 epochs, 500 warmup steps then cosine. Images:
RandomResizedCrop(scale 0.9-1, the model's interpolation) + the model's normalisation, no
flip (CMA's transform); ``augment=false`` uses the eval transform. The backbone runs in eval
mode (dropout off, BatchNorm statistics frozen), so only parameters change, never buffers.

**Adapter**: ``adapter.safetensors`` holds only the trained tensors that changed, under
``model.<parameter name>`` (names of ``model.torch_module``) and ``head.weight`` (FT, LP-FT).
Loading (:class:`FullFinetuneAdapter`) checks every name and shape against the model, writes
the tensors into the model in place and marks its identity (``mark_adapted``), so feature and
text caches never mix fine-tuned and base features; ``vlmood eval --adapter``, the API and the
study load it onto a fresh copy of the base model (``adapts_image_encoder``). Class features:
the head's ``W / s`` (FT, LP-FT) or the fine-tuned text tower's template ensemble (FLYP, CMA);
held-out classes get the (fine-tuned) text tower's template ensemble of their names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vlmood.data.base import DataError
from vlmood.errors import UsageError
from vlmood.methods.base import (
    Adapter,
    AdapterError,
    ArrayDataset,
    ImageTrainDataset,
    Method,
    TrainData,
    epoch_summary,
    frozen,
    mark_adapted,
    register_method,
    run_engine,
    train_transform,
)
from vlmood.methods.losses import cma_loss, linear_head_loss
from vlmood.methods.prompt import EvalModeModule
from vlmood.train.engine import CHECKPOINT_NAME, TrainConfig

#: parameter-name prefixes of the image tower (open_clip; Hugging Face CLIPModel)
IMAGE_TOWER_PREFIXES = ("visual.", "vision_model.", "visual_projection.")
#: prefix of backbone tensors in a full fine-tune adapter (the rest: ``head.weight``)
MODEL_PREFIX = "model."
HEAD_KEY = "head.weight"
#: CLIP clamps its learned temperature at 100
MAX_LOG_SCALE = math.log(100.0)


# ---------------------------------------------------------------------------------------------- helpers
def image_tower_names(module: nn.Module) -> list[str]:
    """Names of the image tower's parameters in ``module`` (a model's ``torch_module``)."""
    names = [n for n, _ in module.named_parameters() if n.startswith(IMAGE_TOWER_PREFIXES)]
    if not names:
        raise ValueError(
            f"{type(module).__name__} has no image-tower parameters (names starting with "
            f"{', '.join(IMAGE_TOWER_PREFIXES)}): full fine-tuning supports open_clip and Hugging Face CLIP"
        )
    return names


def load_template_list(spec: str) -> list[str]:
    from vlmood.data.templates import load_templates

    return list(load_templates(spec)[0])


def template_text_features(model, classnames: list[str], templates: list[str]) -> np.ndarray:
    """Zero-shot class features [K, D] float32 of ``model``: per class the mean of its normalised
    prompt embeddings, renormalised (the computation of
    :func:`vlmood.features.text.class_text_features`, without the disk cache)."""
    from vlmood.data.templates import render_prompts
    from vlmood.features.text import DEFAULT_TEXT_BATCH

    per_class = render_prompts(classnames, templates)
    flat = [p for ps in per_class for p in ps]
    with torch.inference_mode():
        emb = model.encode_text(flat, batch_size=DEFAULT_TEXT_BATCH).float().cpu().numpy()
    bounds = np.cumsum([len(ps) for ps in per_class])[:-1]
    mean = np.stack([part.mean(axis=0) for part in np.split(emb, bounds)])
    return (mean / np.linalg.norm(mean, axis=1, keepdims=True)).astype(np.float32)


def zero_shot_head(model, classnames: list[str], templates: list[str]) -> torch.Tensor:
    """The FT head's starting weight [K, D]: zero-shot class features x the model's logit scale."""
    text = torch.from_numpy(template_text_features(model, classnames, templates))
    return text * float(model.logit_scale)


def encode_tokens(model, tokens: torch.Tensor) -> torch.Tensor:
    """Normalised text features [N, D] of token ids, differentiable (FLYP trains the text tower)."""
    m = model.torch_module
    tokens = tokens.to(model.device)
    with model.autocast():
        if hasattr(m, "get_text_features"):  # Hugging Face CLIPModel
            # its text model and projection, not get_text_features: that returns a tensor before
            # transformers 5 and a BaseModelOutputWithPooling from 5 on
            x = m.text_projection(m.text_model(input_ids=tokens).pooler_output)
        else:  # open_clip CLIP / CustomTextCLIP
            x = m.encode_text(tokens)
    return F.normalize(x.float(), dim=-1)


def finetune_transform(model, augment: bool):
    """RandomResizedCrop(scale 0.9-1) + the model's normalisation (CMA; no flip), or the eval
    transform."""
    return train_transform(model, scale=(0.9, 1.0), flip=False) if augment else model.preprocess


def check_base_model(model, what: str) -> None:
    """Refuse a model that already carries an adapter's weights (they would be taken as the base)."""
    key = model.identity.extra.get("adapter")
    if key:
        raise UsageError(
            f"{what} needs the base model, but this one has an adapter loaded into its weights "
            f"(key {str(key)[:12]}); load the model again (vlmood.load_model) and pass that"
        )


class FineTuneModule(EvalModeModule):
    """The model's own torch module (``backbone``, kept in eval mode) + an optional linear head."""

    frozen_children = ("backbone",)

    def __init__(self, model, head: nn.Linear | None = None) -> None:
        super().__init__()
        self.backbone = model.torch_module
        self.head = head
        self.vlm = [model]  # not a submodule

    def image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.vlm[0].encode_image_features(pixels, ("image",))["image"]

    def text(self, tokens: torch.Tensor) -> torch.Tensor:
        return encode_tokens(self.vlm[0], tokens)

    def scale(self) -> torch.Tensor:
        """The learned logit scale, clamped at 100 (differentiable below the clamp)."""
        return self.backbone.logit_scale.clamp(max=MAX_LOG_SCALE).exp()


# ---------------------------------------------------------------------------------------------- methods
@dataclass
class FTParams:
    templates: str = "simple"  # template set or file: the zero-shot head and the class features
    augment: bool = True  # RandomResizedCrop(scale 0.9-1), no flip; false: the eval transform


@dataclass
class LPFTParams(FTParams):
    lp_epochs: int = 10  # phase 1: the head alone on cached features
    lp_lr: float = 1e-3


@dataclass
class FLYPParams:
    templates: str = "simple"  # caption templates (one drawn per image and step) and class features
    augment: bool = True


@dataclass
class CMAParams(FLYPParams):
    lam: float | None = None  # the regulariser's weight; required (the paper's command: 0.001)
    allow_zero_lambda: bool = False  # lam = 0 (CMA = FLYP) only when asked


class FullFinetune(Method):
    """Shared parts: the training loop over images, restoring the base model, the adapter."""

    adapts_image_encoder = True  # its adapter rewrites the model's weights when loaded
    kinds: tuple[str, ...] = ()
    has_head: bool = False

    @property
    def needs_images(self) -> bool:
        return True

    def default_config(self, **overrides: Any) -> TrainConfig:
        base = dict(
            epochs=10,
            batch_size=512,
            lr=1e-5,
            optimizer="adamw",
            weight_decay=0.1,
            schedule="cosine",
            warmup_steps=500,
        )
        base.update(overrides)
        return TrainConfig(**base)

    def validate(self) -> None:
        self.caption_templates = load_template_list(self.params.templates)

    def trainable_names(self, model) -> list[str]:
        """Parameter names of ``model.torch_module`` this method trains."""
        raise NotImplementedError

    def loss_fn(self, model, data: TrainData):
        raise NotImplementedError

    def make_head(self, model, data: TrainData) -> nn.Linear | None:
        if not self.has_head:
            return None
        w = zero_shot_head(model, data.classnames, self.caption_templates)
        head = nn.Linear(w.shape[1], w.shape[0], bias=False)
        with torch.no_grad():
            head.weight.copy_(w)
        return head.to(model.device)

    def before(self, model, data, cfg, out_dir, device, progress, resume, head) -> dict[str, Any]:
        """A phase before full fine-tuning (LP-FT's linear probe); returns its metrics."""
        return {}

    def fit(self, model, data, cfg, out_dir, device, progress=True, resume=False):
        if data.source is None:
            raise DataError(f"{self.name} runs the image encoder while training; give it an image source")
        check_base_model(model, self.name)
        model.to(device)
        module = model.torch_module
        names = self.trainable_names(model)
        params = dict(module.named_parameters())
        original = {n: params[n].detach().clone() for n in names}
        self.effective_config = cfg
        transform = finetune_transform(model, self.params.augment)
        dataset = ImageTrainDataset(data.source, transform, data.labels)
        metrics: dict[str, Any] = {}
        try:
            with frozen(module):
                head = self.make_head(model, data)
                metrics.update(self.before(model, data, cfg, out_dir, device, progress, resume, head))
                for n in names:
                    params[n].requires_grad_(True)
                self.module = FineTuneModule(model, head)
                hist = run_engine(
                    self.module,
                    dataset,
                    self.loss_fn(model, data),
                    cfg,
                    Path(out_dir),
                    device,
                    progress,
                    resume,
                )
            self.trained = {
                n: params[n].detach().clone() for n in names if not torch.equal(params[n], original[n])
            }
            self.head_weight = head.weight.detach().clone() if head is not None else None
            metrics["logit_scale"] = float(model.logit_scale)
        finally:
            # the base model leaves fit() as it came in (its identity still describes its weights)
            with torch.no_grad():
                for n, v in original.items():
                    params[n].copy_(v)
        metrics["trained_tensors"] = len(self.trained)
        return {**metrics, **epoch_summary(hist)}

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {MODEL_PREFIX + n: v for n, v in self.trained.items()}
        if self.head_weight is not None:
            out[HEAD_KEY] = self.head_weight
        return out

    def hparams(self) -> dict[str, Any]:
        d = super().hparams()
        d["caption_templates"] = list(self.caption_templates)  # the adapter rebuilds class features
        return d

    @classmethod
    def build_adapter(cls, model, info, tensors):
        return FullFinetuneAdapter(model, info, tensors)


class _HeadFinetune(FullFinetune):
    has_head = True

    def trainable_names(self, model) -> list[str]:
        return image_tower_names(model.torch_module)

    def loss_fn(self, model, data):
        def loss_fn(module, batch):
            f = module.image(batch["pixels"])
            return linear_head_loss(f, module.head.weight, batch["label"]), {}

        return loss_fn


@register_method("ft")
class FT(_HeadFinetune):
    """FT: cross-entropy through a zero-shot-initialised linear head; image tower and head train."""

    Params = FTParams


@register_method("lp-ft")
class LPFT(_HeadFinetune):
    """LP-FT: a linear probe on frozen features first, then FT from that head (one adapter)."""

    Params = LPFTParams
    kinds = ("image",)  # phase 1 reads cached image features

    @property
    def images_need_features(self) -> bool:
        return True

    def validate(self) -> None:
        super().validate()
        if self.params.lp_epochs < 1:
            raise UsageError(
                f"method 'lp-ft' parameter 'lp_epochs' must be >= 1, got {self.params.lp_epochs}"
            )
        if not self.params.lp_lr > 0:
            raise UsageError(f"method 'lp-ft' parameter 'lp_lr' must be > 0, got {self.params.lp_lr}")

    def lp_config(self, cfg: TrainConfig) -> TrainConfig:
        return TrainConfig(
            epochs=self.params.lp_epochs,
            batch_size=cfg.batch_size,
            lr=self.params.lp_lr,
            optimizer="adamw",
            weight_decay=0.0,
            schedule="cosine",
            seed=cfg.seed,
            precision=cfg.precision,
            drop_last=False,
            num_workers=0,
            log_every=cfg.log_every,
            tensorboard=cfg.tensorboard,
            extra=dict(cfg.extra),  # what the run's resume check covers covers phase 1 too
        )

    def before(self, model, data, cfg, out_dir, device, progress, resume, head):
        if "image" not in data.features:
            raise ValueError("lp-ft needs cached 'image' features for its linear-probe phase")
        lp_dir = Path(out_dir) / "lp"
        # phase 1 is deterministic: a finished or interrupted phase 1 always continues from its checkpoint
        lp_resume = (lp_dir / CHECKPOINT_NAME).is_file()

        def loss_fn(module, batch):
            return linear_head_loss(batch["image"], module.weight, batch["label"]), {}

        head.weight.requires_grad_(True)
        dataset = ArrayDataset({"image": data.features["image"]}, data.labels)
        hist = run_engine(head, dataset, loss_fn, self.lp_config(cfg), lp_dir, device, progress, lp_resume)
        return {"lp": epoch_summary(hist)}


class _Contrastive(FullFinetune):
    def trainable_names(self, model) -> list[str]:
        names = [n for n, _ in model.torch_module.named_parameters()]
        if "logit_scale" not in names:
            raise ValueError(f"{type(model.torch_module).__name__} has no logit_scale parameter to learn")
        return names

    def lam(self) -> float:
        return 0.0

    def fit(self, model, data, cfg, out_dir, device, progress=True, resume=False):
        if cfg.batch_size < 2:
            raise UsageError(
                f"method {self.name!r} trains with a contrastive loss, which needs at least 2 images per "
                f"batch (other images are the negatives); got batch size {cfg.batch_size}: raise "
                "--train-batch-size"
            )
        return super().fit(model, data, cfg, out_dir, device, progress=progress, resume=resume)

    def extra_loss(self, model, data):
        """None, or ``fn(module, batch, image_features, scale) -> (loss, logs)``: terms a subclass
        adds to the contrastive loss after it is computed (ARF's anchors)."""
        return None

    def loss_fn(self, model, data):
        from vlmood.data.templates import render_prompts

        per_class = render_prompts(data.classnames, self.caption_templates)
        flat = [p for ps in per_class for p in ps]
        tokens = model.tokenize(flat)
        counts = torch.tensor([len(ps) for ps in per_class])
        starts = torch.cumsum(counts, 0) - counts
        single = bool((counts == 1).all())
        lam = self.lam()
        extra = self.extra_loss(model, data)

        on_device: dict[torch.device, tuple[torch.Tensor, ...]] = {}

        def loss_fn(module, batch):
            # captions picked on the labels' device and logs left as tensors (the engine reads them
            # after its step's one sync): no host sync inside the forward
            labels = batch["label"]
            dev = labels.device
            if dev not in on_device:
                on_device[dev] = (tokens.to(dev), starts.to(dev), counts.to(dev))
            tok, st, cnt = on_device[dev]
            if single:
                rows = st[labels]
            else:  # one caption per image, drawn with the engine's per-epoch seeded (CPU) RNG
                u = torch.rand(len(labels)).to(dev, non_blocking=True)
                rows = st[labels] + (u * cnt[labels]).long()
            f = module.image(batch["pixels"])
            t = module.text(tok[rows])
            s = module.scale()
            loss, clip, reg = cma_loss(f, t, s, lam)
            logs = {"clip_loss": clip.detach(), "logit_scale": s.detach()}
            if lam:
                logs["cma_reg"] = reg.detach()
            if extra is not None:
                more, more_logs = extra(module, batch, f, s)
                loss = loss + more
                logs.update(more_logs)
            return loss, logs

        return loss_fn


@register_method("flyp")
class FLYP(_Contrastive):
    """FLYP: both towers and the logit scale fine-tuned with the CLIP loss on class captions."""

    Params = FLYPParams


@register_method("cma")
class CMA(_Contrastive):
    """CMA: FLYP's contrastive loss + the cross-modal alignment regulariser (lam required)."""

    Params = CMAParams

    def validate(self) -> None:
        super().validate()
        lam = self.params.lam
        if lam is None:
            raise UsageError(
                "method 'cma' needs its regulariser weight: pass --param lam=0.001 (the paper's value); "
                "there is no default"
            )
        if lam < 0:
            raise UsageError(f"method 'cma' parameter 'lam' must be >= 0, got {lam}")
        if lam == 0 and not self.params.allow_zero_lambda:
            raise UsageError(
                "method 'cma' with lam=0 is plain FLYP; pass a positive lam (the paper: 0.001), "
                "or allow_zero_lambda=true to run it anyway"
            )

    def lam(self) -> float:
        return float(self.params.lam)


# ---------------------------------------------------------------------------------------------- adapter
class FullFinetuneAdapter(Adapter):
    """Fine-tuned weights written into the model (``model.*`` tensors) + class features: the
    head's ``W / s`` (``head.weight``) or the fine-tuned text tower's template ensemble."""

    kind = "finetune"
    adapts_image_encoder = True

    def __init__(
        self, model, info: dict[str, Any], tensors: dict[str, torch.Tensor], apply: bool = True
    ) -> None:
        super().__init__(model, info)
        templates = self.params.get("caption_templates")
        if not templates:
            raise AdapterError(f"{self.method} adapter has no caption_templates in its params")
        self.templates = list(templates)
        self.head = tensors.get(HEAD_KEY)
        if self.head is not None and tuple(self.head.shape) != (len(self.classnames), model.embed_dim):
            raise AdapterError(
                f"{self.method} adapter head has shape {tuple(self.head.shape)}, expected "
                f"({len(self.classnames)}, {model.embed_dim})"
            )
        self._text: np.ndarray | None = None
        if apply:
            apply_model_tensors(model, tensors, info.get("adapter_key", ""), self.method)

    def text_features(self) -> np.ndarray:
        if self._text is None:
            if self.head is not None:
                self._text = (self.head.float() / float(self.model.logit_scale)).numpy().astype(np.float32)
            else:
                self._text = template_text_features(self.model, self.classnames, self.templates)
        return self._text

    def for_classes(self, classnames) -> FullFinetuneAdapter:
        """Other class names: the (fine-tuned) text tower's template ensemble of them."""
        info = {**self.info, "classnames": list(classnames)}
        return FullFinetuneAdapter(self.model, info, {}, apply=False)


def apply_model_tensors(model, tensors: dict[str, torch.Tensor], key: str, method: str) -> None:
    """Write the adapter's ``model.*`` tensors into ``model`` (names and shapes checked first) and
    mark its identity."""
    check_base_model(model, f"loading a {method} adapter")
    own = dict(model.torch_module.named_parameters())
    mine = {k[len(MODEL_PREFIX) :]: v for k, v in tensors.items() if k.startswith(MODEL_PREFIX)}
    other = sorted(k for k in tensors if not k.startswith(MODEL_PREFIX) and k != HEAD_KEY)
    missing = sorted(set(mine) - set(own))
    if missing or other:
        raise AdapterError(
            f"{method} adapter holds tensors the model does not have: {(missing + other)[:5]}; "
            f"load it onto the base model it was trained on"
        )
    bad = [n for n, v in mine.items() if tuple(v.shape) != tuple(own[n].shape)]
    if bad:
        raise AdapterError(f"{method} adapter tensors do not fit the model's shapes: {bad[:5]}")
    with torch.no_grad():
        for n, v in mine.items():
            own[n].copy_(v.to(own[n].device, own[n].dtype))
    mark_adapted(model, key)
