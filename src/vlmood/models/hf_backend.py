"""Hugging Face transformers backend: :class:`HFCLIPVLM` over ``CLIPModel``.

Feature kinds (one forward of ``vision_model``):

- ``"image"``: ``visual_projection(post_layernorm(CLS))``, L2-normalised (= ``get_image_features``).
- ``"preproj"``: ``post_layernorm(CLS)``, the pooled output before ``visual_projection``.
- ``"patch"``: ``visual_projection(post_layernorm(patch tokens of last_hidden_state))``, normalised.
  This is the *plain* patch path (the last block's full output), **not** the GL-MCM value path
  that the open_clip backend computes; the two give different local features.

Tokenizer: the directory's own ``CLIPTokenizer`` files (``vocab.json`` + ``merges.txt`` or
``tokenizer.json``) when present. When the directory has none (common for offline copies: the
CLIP vocabulary cannot be fetched from the hub here) we fall back, with a warning, to open_clip's
``SimpleTokenizer``, which ships the same OpenAI BPE vocabulary inside the open_clip wheel and
yields the same token ids up to the end-of-text token; with the causal text mask and pooling at
the first end-of-text token, padding after it does not change the embedding.
:func:`write_clip_tokenizer_files` writes ``vocab.json``/``merges.txt`` from that vocabulary.

Preprocessing: a torchvision transform equivalent to the ``CLIPImageProcessor`` settings read
from ``preprocessor_config.json`` (resize shortest edge, center crop, scale to [0, 1], normalize);
resizing runs on PIL images, as the image processor does.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import os
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vlmood.models.base import VLM, ModelIdentity, ModelLoadError, PreprocessSpec
from vlmood.models.open_clip_backend import check_kinds
from vlmood.utils import sha256_json

log = logging.getLogger(__name__)

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json")
_RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def import_transformers():
    """Import transformers lazily; ModelLoadError with the install hint when it is missing."""
    try:
        import transformers
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ModelLoadError(
            "the 'hf:' backend needs Hugging Face transformers (a vlmood dependency): pip install transformers"
        ) from e
    return transformers


def hub_offline() -> bool:
    """True when the environment asks for offline hub access (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
            return True
    return False


@contextlib.contextmanager
def respect_offline_env():
    """Make huggingface_hub honour HF_HUB_OFFLINE as set *now* (it reads the variable at import)."""
    if not hub_offline():
        yield
        return
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover
        yield
        return
    old = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = old


@lru_cache(maxsize=1)
def _openai_bpe() -> tuple[dict[str, int], list[str]]:
    """The OpenAI CLIP BPE vocabulary and merges, rebuilt from the file open_clip ships."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    with gzip.open(default_bpe(), "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    tokens = list(bytes_to_unicode().values())
    tokens = tokens + [t + "</w>" for t in tokens]
    tokens += ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def write_clip_tokenizer_files(directory: str | os.PathLike) -> None:
    """Write ``vocab.json`` and ``merges.txt`` of the OpenAI CLIP BPE tokenizer into ``directory``
    (from open_clip's bundled vocabulary), so that ``CLIPTokenizer.from_pretrained(directory)``
    works offline. Token ids match ``openai/clip-vit-*`` (``<|startoftext|>`` 49406,
    ``<|endoftext|>`` 49407)."""
    from vlmood.utils import atomic_write_text

    vocab, merges = _openai_bpe()
    d = Path(directory)
    atomic_write_text(d / "vocab.json", json.dumps(vocab, ensure_ascii=False))
    atomic_write_text(d / "merges.txt", "#version: 0.2\n" + "\n".join(merges) + "\n")


class _OpenClipTokenizerFallback:
    """open_clip SimpleTokenizer with the model's context length, returning long ids [N, L]."""

    def __init__(self, context_length: int) -> None:
        from open_clip.tokenizer import SimpleTokenizer

        self.context_length = context_length
        self._tok = SimpleTokenizer(context_length=context_length)

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, None]:
        return self._tok(texts), None


class _HFTokenizer:
    def __init__(self, tokenizer: Any, context_length: int) -> None:
        self.context_length = context_length
        self._tok = tokenizer

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self._tok(
            texts, padding="max_length", max_length=self.context_length, truncation=True, return_tensors="pt"
        )
        return enc["input_ids"].long(), enc["attention_mask"]


def _preprocess_from_dir(directory: Path | None, image_size: int) -> tuple[Callable, PreprocessSpec, str]:
    """Transform and spec equivalent to the directory's CLIPImageProcessor config (or CLIP defaults)."""
    from torchvision import transforms as T

    cfg: dict[str, Any] = {}
    source = "defaults"
    if directory is not None and (directory / "preprocessor_config.json").is_file():
        cfg = json.loads((directory / "preprocessor_config.json").read_text(encoding="utf-8"))
        source = "preprocessor_config.json"
    elif directory is not None:
        log.warning(
            "%s has no preprocessor_config.json; using CLIP defaults (resize %d bicubic, center crop, OpenAI mean/std)",
            directory,
            image_size,
        )
    size = cfg.get("size", {"shortest_edge": image_size})
    if isinstance(size, int):
        size = {"shortest_edge": size}
    crop = cfg.get("crop_size", {"height": image_size, "width": image_size})
    if isinstance(crop, int):
        crop = {"height": crop, "width": crop}
    do_resize = cfg.get("do_resize", True)
    do_crop = cfg.get("do_center_crop", True)
    mean = tuple(float(m) for m in cfg.get("image_mean", OPENAI_CLIP_MEAN))
    std = tuple(float(s) for s in cfg.get("image_std", OPENAI_CLIP_STD))
    resample = cfg.get("resample", 3)
    interp_name = (
        _RESAMPLE_NAMES.get(int(resample), "bicubic") if isinstance(resample, int) else str(resample)
    )
    interp = {
        "nearest": T.InterpolationMode.NEAREST,
        "bilinear": T.InterpolationMode.BILINEAR,
        "bicubic": T.InterpolationMode.BICUBIC,
        "lanczos": T.InterpolationMode.LANCZOS,
        "box": T.InterpolationMode.BOX,
        "hamming": T.InterpolationMode.HAMMING,
    }[interp_name]
    steps: list[Any] = [_ToRGB()]
    resize_mode = "shortest"
    if do_resize:
        if "shortest_edge" in size:
            steps.append(T.Resize(int(size["shortest_edge"]), interpolation=interp))
        else:
            steps.append(T.Resize((int(size["height"]), int(size["width"])), interpolation=interp))
            resize_mode = "squash"
    if do_crop:
        steps.append(T.CenterCrop((int(crop["height"]), int(crop["width"]))))
        out_size = int(crop["height"])
    else:
        out_size = int(size.get("shortest_edge", size.get("height", image_size)))
    steps.append(T.ToTensor())  # includes the 1/255 rescale
    if cfg.get("do_normalize", True):
        steps.append(T.Normalize(mean, std))
    spec = PreprocessSpec(
        image_size=out_size, mean=mean, std=std, interpolation=interp_name, resize_mode=resize_mode
    )
    # the spec cannot express every processor option (resize size vs crop, do_resize, do_normalize):
    # the resolved transform goes into the identity too, so any change gives a new cache key
    resolved = {"steps": repr(T.Compose(steps)), "processor": source}
    return T.Compose(steps), spec, sha256_json(resolved)


class _ToRGB:
    def __call__(self, img: Any) -> Any:
        return img.convert("RGB") if hasattr(img, "convert") and getattr(img, "mode", "RGB") != "RGB" else img

    def __repr__(self) -> str:
        return "ToRGB()"


class HFCLIPVLM(VLM):
    """Adapter over a transformers ``CLIPModel`` (see module docstring)."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Callable[[list[str]], tuple[torch.Tensor, torch.Tensor | None]],
        preprocess: Callable[[Any], torch.Tensor],
        identity: ModelIdentity,
        device: str | torch.device = "cpu",
    ) -> None:
        self.model = model
        self._tokenizer = tokenizer
        self._preprocess = preprocess
        self.identity = identity
        self.device = torch.device(device)
        self.model.to(self.device)
        self.model.eval()

    @property
    def torch_module(self) -> nn.Module:
        return self.model

    @property
    def embed_dim(self) -> int:
        return int(self.model.config.projection_dim)

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().exp().float().item())

    @property
    def preprocess(self) -> Callable[[Any], torch.Tensor]:
        return self._preprocess

    @property
    def context_length(self) -> int:
        return int(self._tokenizer.context_length)  # type: ignore[attr-defined]

    @property
    def token_embedding(self) -> nn.Embedding:
        return self.model.text_model.embeddings.token_embedding

    @property
    def text_transformer(self) -> nn.Module:
        return self.model.text_model.encoder

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        return self._tokenizer(list(texts))[0]

    def encode_text(
        self,
        texts: Sequence[str],
        batch_size: int = 256,
        progress: Callable[[int], object] | None = None,
    ) -> torch.Tensor:
        """Normalised text embeddings [N, D] float32 (no grad, batched). The CLIP text transformer
        is causal and pools at the end-of-text position, so prompts are sorted by that position
        and each batch runs only up to its longest prompt (same embeddings up to float rounding).
        ``progress``, when given, is called with the number of prompts of each finished batch."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not texts:
            return torch.empty(0, self.embed_dim, device=self.device)
        ids, mask = self._tokenizer(texts)
        pool = self._pool_positions(ids)
        order = torch.argsort(pool, stable=True)
        out = torch.empty(len(texts), self.embed_dim, device=self.device)
        with torch.no_grad(), self.autocast():
            for i in range(0, len(texts), batch_size):
                idx = order[i : i + batch_size]
                width = int(pool[idx].max()) + 1
                outputs = self.model.text_model(
                    input_ids=ids[idx, :width].to(self.device),
                    attention_mask=None if mask is None else mask[idx, :width].to(self.device),
                )
                feats = self.model.text_projection(outputs.pooler_output)
                out[idx.to(self.device)] = F.normalize(feats.float(), dim=-1)
                if progress is not None:
                    progress(len(idx))
        return out

    def _pool_positions(self, ids: torch.Tensor) -> torch.Tensor:
        """The position ``CLIPTextTransformer`` pools for each row (its own rule)."""
        eos = getattr(self.model.text_model, "eos_token_id", 2)
        if eos == 2:
            return ids.int().argmax(dim=-1)
        return (ids.int() == eos).int().argmax(dim=-1)

    def encode_image_features(
        self, images: torch.Tensor, kinds: Sequence[str] = ("image",)
    ) -> dict[str, torch.Tensor]:
        kinds = check_kinds(kinds)
        images = images.to(self.device, self.model.visual_projection.weight.dtype)
        vm = self.model.vision_model
        out: dict[str, torch.Tensor] = {}
        with self.autocast():
            outputs = vm(pixel_values=images)
            pooled = outputs.pooler_output  # post_layernorm(CLS)
            if "preproj" in kinds:
                out["preproj"] = pooled.float()
            if "image" in kinds:
                out["image"] = F.normalize(self.model.visual_projection(pooled).float(), dim=-1)
            if "patch" in kinds:
                tokens = vm.post_layernorm(outputs.last_hidden_state[:, 1:])
                out["patch"] = F.normalize(self.model.visual_projection(tokens).float(), dim=-1)
        return {k: out[k] for k in kinds}


def _has_weights(d: Path) -> bool:
    return any((d / n).is_file() for n in ("model.safetensors", "pytorch_model.bin")) or any(
        d.glob("model-*.safetensors")
    )


def _weights_hash(d: Path) -> str:
    """sha256 over the weight files of a HF directory (single or sharded)."""
    from vlmood.utils import sha256_file, sha256_json

    files = sorted(p for p in d.iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file())
    if len(files) == 1:
        return "sha256:" + sha256_file(files[0])
    return "sha256:" + sha256_json({p.name: sha256_file(p) for p in files})


def load_hf_clip(
    name_or_path: str,
    *,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    quick_gelu: bool | None = None,
    image_size: int | None = None,
    spec: str = "",
) -> HFCLIPVLM:
    """Load a transformers ``CLIPModel`` from a local directory (``local_files_only``) or, unless
    HF_HUB_OFFLINE is set, a hub name. Raises ModelLoadError saying what to pass."""
    transformers = import_transformers()
    path = Path(name_or_path).expanduser()
    is_local = (
        path.is_dir()
        or name_or_path.startswith(("/", ".", "~"))
        or (os.sep in name_or_path and path.exists())
    )
    hint = "pass hf:/path/to/dir where the directory holds config.json and model.safetensors (or pytorch_model.bin)"
    if is_local:
        if not path.is_dir():
            raise ModelLoadError(f"hf: directory not found: {path}; {hint}")
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"hf: {path} has no config.json; {hint}")
        if not _has_weights(path):
            raise ModelLoadError(f"hf: {path} has no model.safetensors / pytorch_model.bin; {hint}")
        source: str = str(path)
    else:
        if hub_offline():
            raise ModelLoadError(
                f"hf:{name_or_path} is a hub name, but HF_HUB_OFFLINE is set, so it cannot be fetched; {hint}"
            )
        source = name_or_path
    if quick_gelu is not None:
        log.warning("hf: quick_gelu=%s ignored: the activation comes from the model config", quick_gelu)
    try:
        with respect_offline_env():
            model = transformers.CLIPModel.from_pretrained(source, local_files_only=is_local)
    except Exception as e:
        raise ModelLoadError(f"hf: could not load CLIPModel from {source!r}: {e}; {hint}") from e
    model.float()
    cfg = model.config
    ctx = int(cfg.text_config.max_position_embeddings)
    tokenizer: Any
    tok_source = "open_clip SimpleTokenizer (fallback)"
    if is_local and not any((path / n).is_file() for n in _TOKENIZER_FILES):
        log.warning(
            "hf: %s has no tokenizer files (tokenizer.json or vocab.json + merges.txt); using open_clip's "
            "bundled OpenAI CLIP BPE tokenizer (same vocabulary), context length %d",
            path,
            ctx,
        )
        tokenizer = _OpenClipTokenizerFallback(ctx)
    else:
        try:
            with respect_offline_env():
                hf_tok = transformers.AutoTokenizer.from_pretrained(source, local_files_only=is_local)
        except Exception as e:
            raise ModelLoadError(f"hf: could not load the tokenizer from {source!r}: {e}") from e
        tokenizer = _HFTokenizer(hf_tok, ctx)
        tok_source = type(hf_tok).__name__
    vision_size = int(image_size or cfg.vision_config.image_size)
    if image_size is not None and image_size != cfg.vision_config.image_size:
        raise ModelLoadError(
            f"hf: image_size={image_size} differs from the model's {cfg.vision_config.image_size}; "
            "resizing position embeddings is not supported for the hf backend"
        )
    preprocess, pp_spec, pp_source = _preprocess_from_dir(path if is_local else None, vision_size)
    if not is_local:
        try:
            with respect_offline_env():
                proc = transformers.CLIPImageProcessor.from_pretrained(source)
            preprocess, pp_spec, pp_source = _preprocess_from_processor(proc, vision_size)
        except Exception as e:  # keep defaults
            log.warning("hf: no image processor config for %s (%s); using CLIP defaults", source, e)
    weights = _weights_hash(path) if is_local else f"hub:{name_or_path}"
    arch = getattr(cfg, "_name_or_path", "") if not is_local else ""
    arch_desc = {
        "vision": {
            k: getattr(cfg.vision_config, k)
            for k in ("hidden_size", "num_hidden_layers", "patch_size", "image_size")
        },
        "text": {
            k: getattr(cfg.text_config, k)
            for k in ("hidden_size", "num_hidden_layers", "max_position_embeddings")
        },
        "projection_dim": cfg.projection_dim,
    }
    from vlmood.utils import sha256_json

    identity = ModelIdentity(
        backend="hf",
        arch=arch or f"hf-clip-{sha256_json(arch_desc)[:12]}",
        weights=weights,
        precision=precision,
        quick_gelu=cfg.vision_config.hidden_act == "quick_gelu",
        preprocess=pp_spec,
        spec=spec,
        extra={
            "config_sha256": sha256_json(_stable_config(cfg.to_dict())),
            "tokenizer": tok_source,
            "preprocess_sha256": pp_source,
        },
    )
    return HFCLIPVLM(model, tokenizer, preprocess, identity, device=device)


_VOLATILE_KEYS = {
    "transformers_version",
    "architectures",
    "torch_dtype",
    "dtype",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
    "use_return_dict",
}


def _stable_config(d: Any) -> Any:
    """Config dict without paths, versions and runtime flags (they do not change outputs)."""
    if isinstance(d, dict):
        return {
            str(k): _stable_config(v)
            for k, v in d.items()
            if not str(k).startswith("_") and k not in _VOLATILE_KEYS
        }
    return d


def _preprocess_from_processor(proc: Any, image_size: int) -> tuple[Callable, PreprocessSpec, str]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        proc.save_pretrained(tmp)
        return _preprocess_from_dir(Path(tmp), image_size)
