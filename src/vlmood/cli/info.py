"""``vlmood models``, ``vlmood scores`` and ``vlmood methods``: what is registered."""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import inspect
from typing import Any

from vlmood.cli import _common as C


def add_parsers(sub: Any) -> None:
    C.add_command(sub, "models", help="list registered models and spec forms").set_defaults(func=cmd_models)
    sc = C.add_command(sub, "scores", help="list registered OOD scores and their parameters")
    sc.add_argument("pattern", nargs="?", default="*", help="only scores whose name matches this glob")
    sc.set_defaults(func=cmd_scores)
    me = C.add_command(sub, "methods", help="list registered adaptation methods and their parameters")
    me.add_argument("pattern", nargs="?", default="*", help="only methods whose name matches this glob")
    me.set_defaults(func=cmd_methods)


def cmd_models(args: argparse.Namespace) -> int:
    from vlmood.defaults import DEFAULT_MODEL
    from vlmood.models import MODELS, list_models

    print("registered models:")
    for name in list_models():
        doc = (MODELS.get(name).__doc__ or "").strip().split("\n")[0].rstrip(".:")
        tag = " (default)" if name == DEFAULT_MODEL else ""
        print(f"  {name + tag:<24}{doc}")
    print(
        "\nspec forms:\n"
        "  NAME                              a registered model above\n"
        "  open_clip:ARCH@TAG                open_clip pretrained tag (needs the hub or its cache)\n"
        "  open_clip:ARCH@/path/w.safetensors  open_clip architecture + local weights file\n"
        "  open_clip:ARCH                    random initialisation (tests)\n"
        "  local-dir:/path                   open_clip_config.json + weights\n"
        "  hf:NAME or hf:/path               Hugging Face transformers CLIPModel"
    )
    return 0


def first_line(obj: Any) -> str:
    """The first line of ``obj``'s own docstring (not one inherited from a base class)."""
    doc = inspect.cleandoc(obj.__doc__) if isinstance(getattr(obj, "__doc__", None), str) else ""
    return doc.splitlines()[0] if doc else ""


def cmd_scores(args: argparse.Namespace) -> int:
    from vlmood.scores import SCORES

    for name, factory in SCORES.items():
        if not fnmatch.fnmatch(name, args.pattern):
            continue
        sig = inspect.signature(factory)
        params = ", ".join(
            f"{p.name}={p.default!r}"
            for p in sig.parameters.values()
            if p.default is not inspect.Parameter.empty
        )
        doc = (inspect.getdoc(factory) or "").splitlines()
        print(f"{name:<12} {doc[0] if doc else ''}")
        if params:
            print(f"{'':<12} params: {params}")
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    """Each registered method with the first line of its class docstring and its ``Params``
    defaults (settable as ``vlmood fit METHOD --param KEY=VALUE``)."""
    from vlmood.methods import METHODS

    for name, cls in METHODS.items():
        if not fnmatch.fnmatch(name, args.pattern.lower()):
            continue
        print(f"{name:<14} {first_line(cls)}")
        fields = dataclasses.fields(cls.Params) if dataclasses.is_dataclass(cls.Params) else ()
        params = ", ".join(f"{f.name}={f.default!r}" for f in fields if f.default is not dataclasses.MISSING)
        if params:
            print(f"{'':<14} params: {params}")
    return 0
