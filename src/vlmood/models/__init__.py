"""Backbone adapters: the VLM protocol, model spec strings, the model registry.

``load_model("open_clip:ViT-B-32@/path/w.safetensors")`` returns a :class:`VLM`; see
:mod:`vlmood.models.specs` for every spec form. Backends (open_clip, transformers) are imported
lazily, so importing this package is cheap.
"""

from vlmood.models.base import FEATURE_KINDS, VLM, ModelIdentity, ModelLoadError, PreprocessSpec
from vlmood.models.specs import (
    MODELS,
    ModelSpec,
    ensure_model_configs,
    list_models,
    list_open_clip_archs,
    load_model,
    parse_model_spec,
    register_model,
    save_open_clip_local_dir,
    save_open_clip_weights,
)

__all__ = [
    "FEATURE_KINDS",
    "MODELS",
    "VLM",
    "ModelIdentity",
    "ModelLoadError",
    "ModelSpec",
    "PreprocessSpec",
    "ensure_model_configs",
    "list_models",
    "list_open_clip_archs",
    "load_model",
    "parse_model_spec",
    "register_model",
    "save_open_clip_local_dir",
    "save_open_clip_weights",
]
