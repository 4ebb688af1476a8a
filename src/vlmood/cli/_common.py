"""What the command groups share: the help formatter, the model/data/extraction options, and the
translation of those options into the run layer's inputs (devices, sets, templates, EvalOptions)."""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any

from vlmood.defaults import DEFAULT_MODEL
from vlmood.errors import UsageError


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows each option's default, except where there is nothing to show (None, off
    flags, empty lists) or the help text already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            "%(default)" in text
            or "default:" in text
            or default is argparse.SUPPRESS
            or default is None
            or default is False
            or default == []
            or not (action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE))
        ):
            return text
        return f"{text} (default: %(default)s)"


VERBOSE_HELP = "show debug logging and full tracebacks (also accepted after the subcommand)"


def add_command(sub: Any, name: str, help: str, **kwargs: Any) -> argparse.ArgumentParser:
    """A subcommand parser with the shared formatter and ``-v`` (accepted after the subcommand:
    ``vlmood eval ... -v``; SUPPRESS keeps a ``-v`` given before it)."""
    kwargs.setdefault("description", help)
    p = sub.add_parser(name, help=help, formatter_class=HelpFormatter, **kwargs)
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
    return p


def scalar(text: str) -> Any:
    """A ``key=value`` value: bool, null, int, float or string (``vlmood.params.parse_value``)."""
    from vlmood.params import parse_value

    return parse_value(text)


def parse_score_arg(text: str) -> list[Any]:
    """``mcm`` | ``mcm,energy`` | ``neglabel:ngroup=10,temperature=0.01`` -> ScoreSpecs
    (:func:`vlmood.eval.runner.parse_score_text`, the one parser of score texts)."""
    from vlmood.eval.runner import parse_score_text

    return parse_score_text(text, "--score")


def score_specs(texts: list[str], default: str) -> list[Any]:
    """Every ``--score`` value (or ``default``) as one list of ScoreSpecs."""
    return [s for text in (texts or [default]) for s in parse_score_arg(text)]


_DEVICE_FORM = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def auto_device(device: str) -> str:
    """``auto`` -> cuda when a GPU is visible, else cpu; other values checked against the machine."""
    if not _DEVICE_FORM.match(device):
        raise UsageError(
            f"--device {device!r} is not a device: use cpu, cuda, cuda:N (N = GPU index) or auto"
        )
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(
                f"--device {device}: no CUDA GPU is visible on this machine "
                "(torch.cuda.is_available() is False); use --device cpu or --device auto"
            )
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise UsageError(
                f"--device {device}: this machine has {torch.cuda.device_count()} visible GPU(s) "
                f"(indices 0..{torch.cuda.device_count() - 1})"
            )
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError("--device mps: Apple's MPS backend is not available here; use --device cpu or auto")
    return device


def auto_precision(precision: str, device: str) -> str:
    if precision != "auto":
        return precision
    return "bf16" if device.startswith("cuda") else "fp32"


DEVICE_HELP = "cpu, cuda, cuda:N or auto (cuda when a GPU is visible, else cpu)"


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="model spec (see `vlmood models`), e.g. open_clip:ViT-B-16@/path/w.safetensors "
        f"(default: {DEFAULT_MODEL}, the shipped offline CLIP on pretrained towers)",
    )
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="auto: bf16 autocast on CUDA, fp32 on CPU",
    )


def add_data_args(p: argparse.ArgumentParser) -> None:
    """The data and extraction options of eval, cache, fit and study."""
    p.add_argument("--benchmark", help="packaged benchmark name (`vlmood data list`) or a YAML file")
    p.add_argument(
        "--root",
        help="data root the benchmark's paths are relative to; also the image root of list/CSV files "
        "given to --id/--ood/--train (default: each list's own folder)",
    )
    p.add_argument("--id", dest="id_data", help="ID set: image folder, image list (.txt) or CSV")
    p.add_argument(
        "--classnames",
        help="class-name file or built-in set (default: the ID folder names); mapped onto class folders "
        "by name: the folder names in any order, or 'folder<TAB>name' lines, or a JSON dict folder -> name",
    )
    p.add_argument(
        "--classnames-order",
        choices=["by-name", "sorted"],
        default=None,
        help="sorted: give a bare class-name list that is not the folder names to the sorted class "
        "folders by position (refused otherwise; the mapping used is recorded in results.json or adapter.json)",
    )
    p.add_argument(
        "--allow-outside-root",
        action="store_true",
        help="let list/CSV entries, benchmark set paths, class-name/template files and symlinks point "
        "outside their data root (refused by default)",
    )
    p.add_argument(
        "--sets",
        default=None,
        metavar="NAME,...",
        help="read only the ID set and these benchmark sets (names or keys, e.g. ninco,textures)",
    )
    p.add_argument(
        "--ood",
        action="append",
        default=[],
        metavar="[GROUP/]NAME=PATH",
        help="an OOD set, repeatable; GROUP is near or far, e.g. --ood far/textures=/data/dtd",
    )
    p.add_argument(
        "--train", help="ID training set (eval: the bank of knn and mahalanobis; fit: the images to train on)"
    )
    p.add_argument(
        "--skip-corrupt",
        action="store_true",
        help="skip unreadable images instead of failing (they are listed in results.json)",
    )
    p.add_argument(
        "--fingerprint",
        default="stat",
        choices=["stat", "content"],
        help="dataset identity for the cache: file sizes+mtimes (fast) or content hashes",
    )
    p.add_argument("--batch-size", type=int, default=64, help="images per batch for feature extraction")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: cores - 1)")
    p.add_argument(
        "--cache-dir", default=None, help="feature cache (default: $VLMOOD_CACHE or ~/.cache/vlmood)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_scores_arg(p: argparse.ArgumentParser, default: str, what: str = "score(s), as for eval") -> None:
    """The repeatable ``--score``/``--scores`` option (``args.scores``; :func:`score_specs` reads it)."""
    p.add_argument(
        "--score",
        "--scores",
        dest="scores",
        action="append",
        default=[],
        help=f"{what} (repeatable; default: {default})",
    )


TEMPLATES_HELP = "built-in template set or file (default: benchmark's or 'simple')"


def add_templates_arg(p: argparse.ArgumentParser, help: str = TEMPLATES_HELP) -> None:
    """``--templates`` (``args.templates``; :func:`templates` resolves it)."""
    p.add_argument("--templates", default=None, help=help)


def _label(text: str) -> str:
    text = " ".join(text.split())
    if not text:
        raise argparse.ArgumentTypeError("an empty label; give a name, e.g. --label 'ViT-B/16 zero-shot'")
    return text


def add_label_arg(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--label",
        type=_label,
        default=None,
        metavar="TEXT",
        help=f"a name for {what}, recorded in results.json (fit: adapter.json, then in the results of "
        "every evaluation of the adapter) and shown by `vlmood report` (default: method, seed and model)",
    )


def data_inputs(args: argparse.Namespace) -> dict[str, Any]:
    """The data options eval, cache, study and fit share (how sets are found and checked)."""
    return {
        "benchmark": args.benchmark,
        "root": args.root,
        "id_data": args.id_data,
        "train": args.train,
        "classnames": args.classnames,
        "classnames_order": getattr(args, "classnames_order", None),
        "allow_outside_root": getattr(args, "allow_outside_root", False),
        "skip_missing": getattr(args, "skip_corrupt", False),
    }


def build_sets(args: argparse.Namespace):
    from vlmood.eval.sets import sets_from_args

    return sets_from_args(ood=args.ood, only=getattr(args, "sets", None), **data_inputs(args))


def templates(args: argparse.Namespace, sets) -> tuple[list[str], str]:
    """--templates, else the benchmark's templates, else the single 'a photo of a {}.'."""
    from vlmood.data.templates import load_templates

    if args.templates:
        return load_templates(args.templates)[0], args.templates
    if sets.templates:
        return list(sets.templates), sets.templates_origin or "benchmark"
    return load_templates("simple")[0], "simple"


def eval_options(args: argparse.Namespace, sets):
    """EvalOptions from the data arguments shared by eval and study (templates resolved)."""
    from vlmood.eval.runner import EvalOptions

    tmpl, template_origin = templates(args, sets)
    return EvalOptions(
        templates=tmpl,
        templates_origin=template_origin,
        extract=extract_options(args),
        command=sys.argv,
        label=getattr(args, "label", None),
    )


def extract_options(args: argparse.Namespace):
    """ExtractOptions from the shared extraction options (--cache-dir, --batch-size, --workers,
    --skip-corrupt, --fingerprint, --no-progress)."""
    from vlmood.features.options import ExtractOptions

    return ExtractOptions(
        cache_root=args.cache_dir,
        batch_size=args.batch_size,
        num_workers=args.workers,
        skip_corrupt=args.skip_corrupt,
        fingerprint=args.fingerprint,
        progress=not args.no_progress,
    )


def load_model(args: argparse.Namespace):
    from vlmood.models import load_model as _load

    device = auto_device(args.device)
    return _load(args.model, device=device, precision=auto_precision(args.precision, device))
