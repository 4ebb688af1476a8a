"""Declarative OOD benchmarks (YAML): the ID set, its class names and templates, OOD sets grouped
near/far, domain-shift sets and held-out-class sets, each with the folder layout it expects.

Every YAML file in ``vlmood/resources/benchmarks/`` is registered in :data:`BENCHMARKS` under its
file name. A YAML file elsewhere loads with :func:`load_benchmark`; its paths are relative to the
data root given by the user (``--root``), or, when none is given, to ``data_root:`` in the file
(relative to the file) or else to the file's own folder.

Schema (keys not listed are errors)::

    name: my-bench                # required; equals the file name for packaged benchmarks
    description: free text
    data_root: data               # optional default root, relative to this file
    templates: simple             # default template set for the ID classes
    id:                           # required: one set (see below)
    train:                        # optional: ID training images (KNN, Mahalanobis, few-shot)
    ood: {near: [sets], far: [sets]}
    domain_shift: [sets]          # ID classes in another domain
    held_out_classes: [sets]      # unseen classes for zero-shot generalisation

A set names exactly one source, relative to the data root:
``source: path`` (kind guessed; ``folder:``/``flat:``/``list:``/``csv:`` prefixes allowed) or one
of ``folder:`` (class subfolders), ``flat:`` (unlabelled images), ``list:`` or ``csv:`` (with
``root:`` = the image root for their relative paths, default the data root). Optional keys:
``name`` (required in lists), ``classnames`` (built-in set or a file relative to the YAML or the
data root), ``templates``, ``classes``/``wnids`` (use only these class subfolders, in this
order), ``classes_from`` (a built-in class-name set with WordNet ids: its wnids select the
subfolders and its names become the class names), ``label_space: id`` (map class subfolders
named by wnid or class index onto the ID labels), ``classnames_order: sorted`` (give a bare name
list to the sorted class folders by position; also a top-level default), ``optional`` (a missing
optional set is skipped), ``expected_count``, ``note``.

Class names meet class folders by name (:func:`vlmood.data.classnames.assign_folders`). Every
path stays under its root: set paths and image roots under the data root, class-name and
template files under the YAML's folder or the data root, list/CSV entries under their image
root, symlinks under the folder they sit in. ``allow_outside_root=True`` (CLI
``--allow-outside-root``) lifts this; a YAML file cannot grant it to itself. YAML aliases are
refused (:mod:`vlmood.data.yamlsafe`).
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from vlmood.data.base import OUTSIDE_ROOT_FIX, DataError, ImageSample, ImageSource, is_within
from vlmood.data.classnames import BUILTIN_CLASSNAMES, CLASSNAMES_ORDERS, read_classnames
from vlmood.data.sources import LIST_SUFFIXES, guess_kind, load_source, split_kind
from vlmood.data.templates import list_templates, load_templates
from vlmood.data.yamlsafe import MAX_YAML_BYTES, load_yaml
from vlmood.registry import Registry

log = logging.getLogger(__name__)

ROLES = ("id", "train", "near", "far", "domain_shift", "held_out")
_TOP_KEYS = {
    "name",
    "description",
    "data_root",
    "templates",
    "id",
    "train",
    "ood",
    "domain_shift",
    "held_out_classes",
    "classnames_order",
}
_SOURCE_KEYS = ("source", "folder", "flat", "list", "csv")
_SET_KEYS = {
    *_SOURCE_KEYS,
    "name",
    "root",
    "classnames",
    "templates",
    "classes",
    "wnids",
    "classes_from",
    "label_space",
    "classnames_order",
    "optional",
    "expected_count",
    "note",
    "description",
}


@dataclass(frozen=True)
class SetSpec:
    """One image set of a benchmark, as declared (paths relative to the data root)."""

    name: str
    role: str  # id | train | near | far | domain_shift | held_out
    kind: str  # auto | folder | flat | list | csv
    path: str
    root: str | None = None
    classnames: str | None = None
    templates: str | None = None
    classes: tuple[str, ...] | None = None
    classes_from: str | None = None
    label_space: str | None = None
    classnames_order: str | None = None
    optional: bool = False
    expected_count: int | None = None
    note: str = ""

    @property
    def key(self) -> str:
        """Key in :meth:`Benchmark.resolve`'s result: ``id``, ``train``, ``ood/near/<name>``,
        ``ood/far/<name>``, ``domain_shift/<name>`` or ``held_out/<name>``."""
        if self.role in ("id", "train"):
            return self.role
        if self.role in ("near", "far"):
            return f"ood/{self.role}/{self.name}"
        return f"{self.role}/{self.name}"


@dataclass
class Benchmark:
    name: str
    id: SetSpec
    description: str = ""
    train: SetSpec | None = None
    near: list[SetSpec] = field(default_factory=list)
    far: list[SetSpec] = field(default_factory=list)
    domain_shift: list[SetSpec] = field(default_factory=list)
    held_out: list[SetSpec] = field(default_factory=list)
    templates: str = "simple"
    data_root: str | None = None
    origin: str = ""  # the YAML file
    packaged: bool = False
    classnames_order: str | None = None  # default for the sets: None (by name) or "sorted"

    # ------------------------------------------------------------------ structure

    def sets(self) -> list[SetSpec]:
        """All sets: id, train, near, far, domain shift, held-out."""
        out = [self.id]
        if self.train is not None:
            out.append(self.train)
        return out + self.near + self.far + self.domain_shift + self.held_out

    @property
    def ood_sets(self) -> list[SetSpec]:
        return self.near + self.far

    @property
    def base_dir(self) -> Path:
        return Path(self.origin).absolute().parent if self.origin else Path.cwd()

    def data_dir(self, root: str | os.PathLike | None = None) -> Path:
        """The data root: ``root`` if given, else ``data_root`` (relative to the YAML), else the
        YAML's folder for a user file; a packaged benchmark without ``data_root`` needs ``root``."""
        if root is not None:
            return Path(root).absolute()
        if self.data_root is not None:
            return (self.base_dir / self.data_root).absolute()
        if self.packaged:
            raise DataError(
                f"benchmark {self.name!r} needs a data root: pass --root DIR (the folder that holds "
                f"{self.id.path})"
            )
        return self.base_dir

    # ------------------------------------------------------------------ class names / templates

    def _find_file(
        self, value: str, root: Path | None, fld: str, allow_outside_root: bool = False
    ) -> str | None:
        """A class-name or template file relative to the YAML's folder or the data root; a path
        that leaves both (``..``, an absolute path elsewhere) is refused unless allowed."""
        bases = [self.base_dir] + ([root] if root is not None else [])
        outside = None
        for base in bases:
            c = base / value
            if not c.is_file():
                continue
            if allow_outside_root or is_within(value, base):
                return str(c)
            outside = c
        if outside is not None:
            raise DataError(
                f"{self.origin}: field '{fld}': {value!r} leaves the benchmark folder {self.base_dir}"
                + (f" and the data root {root}" if root is not None else "")
                + f"; {OUTSIDE_ROOT_FIX}"
            )
        return None

    def _classnames_arg(
        self, spec: SetSpec, root: Path | None, allow_outside_root: bool = False
    ) -> str | None:
        value = spec.classnames
        if value is None:
            return spec.classes_from
        if value.lower() in BUILTIN_CLASSNAMES:
            return value
        found = self._find_file(value, root, f"{spec.key}.classnames", allow_outside_root)
        if found is None:
            raise DataError(
                f"{self.origin}: field '{spec.key}.classnames': {value!r} is neither a built-in set "
                f"({', '.join(BUILTIN_CLASSNAMES)}) nor a file under {self.base_dir} or {root}"
            )
        return found

    def classnames(
        self, root: str | os.PathLike | None = None, allow_outside_root: bool = False
    ) -> tuple[list[str], str]:
        """ID class names and the sha256 of their file."""
        r = None
        if root is not None or self.data_root is not None or not self.packaged:
            r = self.data_dir(root)
        arg = self._classnames_arg(self.id, r, allow_outside_root)
        if arg is None:
            raise DataError(f"{self.origin}: field 'id.classnames' is required to name the ID classes")
        cn = read_classnames(arg)
        return cn.names, cn.sha256

    def load_templates(
        self, root: str | os.PathLike | None = None, allow_outside_root: bool = False
    ) -> tuple[list[str], str]:
        """ID prompt templates (``id.templates`` or the top-level ``templates``) and their hash."""
        value = self.id.templates or self.templates
        if value.lower() in list_templates():
            return load_templates(value)
        r = self.data_dir(root) if (root is not None or not self.packaged or self.data_root) else None
        found = self._find_file(value, r, "templates", allow_outside_root)
        if found is None:
            raise DataError(f"{self.origin}: field 'templates': {value!r} is not a built-in set or a file")
        return load_templates(found)

    def set_keys(self, names: str | list[str] | tuple[str, ...]) -> set[str]:
        """Keys of the sets named in ``names`` (set names or keys, e.g. ``ninco`` or
        ``ood/near/ninco``, comma-separated); DataError listing the valid names for an unknown one.
        The ID set is always included."""
        if isinstance(names, str):
            names = [n for n in names.split(",")]
        wanted = [n.strip() for n in names if n.strip()]
        by_name: dict[str, str] = {}
        for spec in self.sets():
            by_name[spec.key] = spec.key
            by_name.setdefault(spec.name, spec.key)
        unknown = [n for n in wanted if n not in by_name]
        if unknown:
            valid = ", ".join(
                ["id", *(spec.name if spec.role != "train" else "train" for spec in self.sets()[1:])]
            )
            raise DataError(
                f"--sets: unknown set(s) {', '.join(unknown)} in benchmark {self.name!r}; valid: {valid}"
            )
        return {"id", *(by_name[n] for n in wanted)}

    # ------------------------------------------------------------------ resolving sets

    def expected(self, spec: SetSpec, root: Path) -> str:
        """Human-readable expected layout of one set under ``root``."""
        path = root / spec.path
        kind = spec.kind
        classes = self._classes(spec)
        if kind == "list" or kind == "csv":
            img_root = root / spec.root if spec.root else root
            return f"{path} (a {kind}; image paths relative to {img_root})"
        if kind == "flat":
            return f"{path}/<image>"
        if classes is not None:
            head = ", ".join(classes[:3])
            return f"{path}/<class>/<image> for {len(classes)} class folders ({head}, ...)"
        if kind == "folder":
            return f"{path}/<class>/<image>"
        return f"{path} (a class folder, image folder, image list or CSV)"

    def _classes(self, spec: SetSpec) -> list[str] | None:
        if spec.classes is not None:
            return list(spec.classes)
        if spec.classes_from is not None:
            cn = read_classnames(spec.classes_from)
            if cn.wnids is None:
                raise DataError(
                    f"{self.origin}: field '{spec.key}.classes_from': {spec.classes_from!r} has no WordNet ids"
                )
            return cn.wnids
        return None

    def resolve_set(
        self, spec: SetSpec, root: str | os.PathLike | None = None, allow_outside_root: bool = False
    ) -> ImageSource:
        """Read one set under the data root; DataError if it is missing, unreadable or outside."""
        rootp = self.data_dir(root)
        path = rootp / spec.path
        for fld, value in ((spec.kind if spec.kind != "auto" else "source", spec.path), ("root", spec.root)):
            if value is not None and not allow_outside_root and not is_within(value, rootp):
                raise DataError(
                    f"{self.origin}: field '{spec.key}.{fld}': {value!r} leaves the data root {rootp}; "
                    f"{OUTSIDE_ROOT_FIX}"
                )
        kind = spec.kind
        if kind == "auto":
            if not path.exists():
                raise DataError(f"{spec.key}: {path} does not exist (expected {self.expected(spec, rootp)})")
            kind = guess_kind(path)
        classes = self._classes(spec)
        classnames = self._classnames_arg(spec, rootp, allow_outside_root)
        if spec.label_space == "id":
            classnames = None  # replaced by the ID names below
        img_root = (rootp / spec.root) if spec.root else (rootp if kind in ("list", "csv") else None)
        src = load_source(
            f"{kind}:{path}",
            root=img_root,
            classnames=classnames,
            name=spec.name,
            classes=classes,
            classnames_order=spec.classnames_order or self.classnames_order,
            allow_outside_root=allow_outside_root,
        )
        if spec.label_space == "id":
            src = self._to_id_labels(src, spec, rootp, allow_outside_root)
        src.meta.update(benchmark=self.name, role=spec.role, set_key=spec.key)
        return src

    def _to_id_labels(
        self, src: ImageSource, spec: SetSpec, root: Path, allow_outside_root: bool = False
    ) -> ImageSource:
        folders = src.meta.get("class_folders")
        if folders is None:
            raise DataError(
                f"{self.origin}: field '{spec.key}.label_space': 'id' needs a class-folder source"
            )
        arg = self._classnames_arg(self.id, root, allow_outside_root)
        if arg is None:
            raise DataError(f"{self.origin}: field 'id.classnames' is needed for label_space: id")
        cn = read_classnames(arg)
        where = {w: i for i, w in enumerate(cn.wnids or [])}
        mapping: dict[int, int] = {}
        for j, folder in enumerate(folders):
            if folder in where:
                mapping[j] = where[folder]
            elif folder.isdigit() and int(folder) < len(cn.names):
                mapping[j] = int(folder)
            else:
                raise DataError(
                    f"{spec.key}: class folder {folder!r} under {src.origin} is neither an ID WordNet id "
                    f"nor an ID class index (0..{len(cn.names) - 1})"
                )
        samples = [ImageSample(s.path, mapping[s.label], s.caption) for s in src.samples]
        meta = dict(
            src.meta, label_space="id", classnames_sha256=cn.sha256, classnames_mapping="id-label-space"
        )
        return ImageSource(src.name, samples, list(cn.names), src.kind, src.origin, meta)

    def resolve(
        self,
        root: str | os.PathLike | None = None,
        roles: tuple[str, ...] | None = None,
        only: str | list[str] | tuple[str, ...] | None = None,
        allow_outside_root: bool = False,
    ) -> dict[str, ImageSource]:
        """Read every set (or those with a role in ``roles``, or the ID set plus the sets named in
        ``only``, see :meth:`set_keys`), keyed by :attr:`SetSpec.key`.

        A missing optional set is skipped with a warning; missing required sets raise one
        DataError listing all of them.
        """
        keys = self.set_keys(only) if only is not None else None
        out: dict[str, ImageSource] = {}
        errors: list[str] = []
        for spec in self.sets():
            if roles is not None and spec.role not in roles:
                continue
            if keys is not None and spec.key not in keys:
                continue
            try:
                out[spec.key] = self.resolve_set(spec, root, allow_outside_root)
            except DataError as e:
                if spec.optional:
                    log.warning("benchmark %s: skipping optional set %s: %s", self.name, spec.key, e)
                else:
                    errors.append(f"  {spec.key}: {e}")
        if errors:
            raise DataError(
                f"benchmark {self.name!r}: {len(errors)} set(s) missing or unreadable under "
                f"{self.data_dir(root)}:\n"
                + "\n".join(errors)
                + f"\nRun `vlmood data check {self.name} --root DIR`, or evaluate the sets that exist "
                f"with --sets NAME,..."
            )
        return out


# ---------------------------------------------------------------------- parsing and validation


def _err(origin: str, fld: str, msg: str) -> DataError:
    return DataError(f"{origin}: field '{fld}': {msg}")


def _parse_set(raw: Any, role: str, fld: str, origin: str, default_name: str | None = None) -> SetSpec:
    if isinstance(raw, str):
        raw = {"source": raw}
    if not isinstance(raw, dict):
        raise _err(origin, fld, f"expected a mapping with a source, got {type(raw).__name__}")
    unknown = sorted(set(raw) - _SET_KEYS)
    if unknown:
        raise _err(
            origin, fld, f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_SET_KEYS))}"
        )
    given = [k for k in _SOURCE_KEYS if k in raw]
    if len(given) != 1:
        raise _err(origin, fld, f"give exactly one of {', '.join(_SOURCE_KEYS)} (got {given or 'none'})")
    key = given[0]
    value = raw[key]
    if not isinstance(value, str) or not value.strip():
        raise _err(origin, f"{fld}.{key}", "expected a non-empty path relative to the data root")
    if key == "source":
        kind, path = split_kind(value)
        kind = kind or "auto"
        if kind == "auto" and Path(path).suffix.lower() in LIST_SUFFIXES:
            kind = "list"
        elif kind == "auto" and Path(path).suffix.lower() == ".csv":
            kind = "csv"
    else:
        kind, path = key, value
    if Path(path).is_absolute():
        raise _err(origin, f"{fld}.{key}", f"{path!r} must be relative to the data root")
    name = raw.get("name", default_name)
    if not isinstance(name, str) or not name.strip() or "/" in name:
        raise _err(origin, f"{fld}.name", "required: a set name without '/'")

    def opt_str(k: str) -> str | None:
        v = raw.get(k)
        if v is not None and not isinstance(v, str):
            raise _err(origin, f"{fld}.{k}", f"expected a string, got {type(v).__name__}")
        return v

    classes = raw.get("classes", raw.get("wnids"))
    if "classes" in raw and "wnids" in raw:
        raise _err(origin, fld, "give classes or wnids, not both")
    if classes is not None:
        if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
            raise _err(origin, f"{fld}.classes", "expected a non-empty list of class folder names")
        classes = tuple(classes)
    classes_from = opt_str("classes_from")
    if classes_from is not None:
        if classes is not None:
            raise _err(origin, fld, "give classes/wnids or classes_from, not both")
        if classes_from.lower() not in BUILTIN_CLASSNAMES:
            raise _err(origin, f"{fld}.classes_from", f"{classes_from!r} is not a built-in class-name set")
        cn = read_classnames(classes_from)
        if cn.wnids is None:
            raise _err(origin, f"{fld}.classes_from", f"{classes_from!r} has no WordNet ids")
    if (classes is not None or classes_from is not None) and kind not in ("folder", "auto"):
        raise _err(origin, fld, f"a class subset needs a class folder, not a {kind} source")
    label_space = opt_str("label_space")
    if label_space not in (None, "id"):
        raise _err(origin, f"{fld}.label_space", f"only 'id' is supported, got {label_space!r}")
    optional = raw.get("optional", False)
    if not isinstance(optional, bool):
        raise _err(origin, f"{fld}.optional", "expected true or false")
    expected = raw.get("expected_count")
    if expected is not None and (not isinstance(expected, int) or isinstance(expected, bool) or expected < 1):
        raise _err(origin, f"{fld}.expected_count", "expected a positive integer")
    root = opt_str("root")
    if root is not None and kind not in ("list", "csv", "auto"):
        raise _err(origin, f"{fld}.root", f"only list and csv sources take an image root, not {kind}")
    order = opt_str("classnames_order")
    if order not in (None, *CLASSNAMES_ORDERS):
        raise _err(origin, f"{fld}.classnames_order", f"expected one of {', '.join(CLASSNAMES_ORDERS)}")
    templates = opt_str("templates")
    if templates is not None and role != "id":
        raise _err(origin, f"{fld}.templates", "templates belong to the ID set")
    note = raw.get("note", raw.get("description", "")) or ""
    return SetSpec(
        name=name.strip(),
        role=role,
        kind=kind,
        path=path,
        root=root,
        classnames=opt_str("classnames"),
        templates=templates,
        classes=classes,
        classes_from=classes_from,
        label_space=label_space,
        classnames_order=order,
        optional=optional,
        expected_count=expected,
        note=str(note),
    )


def _parse_list(raw: Any, role: str, fld: str, origin: str) -> list[SetSpec]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise _err(origin, fld, f"expected a list of sets, got {type(raw).__name__}")
    return [_parse_set(item, role, f"{fld}[{i}]", origin) for i, item in enumerate(raw)]


def parse_benchmark(data: Any, origin: str = "<yaml>", packaged: bool = False) -> Benchmark:
    """Validate a parsed YAML mapping and build a :class:`Benchmark` (errors name file and field)."""
    if not isinstance(data, dict):
        raise DataError(f"{origin}: a benchmark file must be a YAML mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise DataError(
            f"{origin}: unknown top-level key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_TOP_KEYS))}"
        )
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise _err(origin, "name", "required: the benchmark name")
    if "id" not in data:
        raise _err(origin, "id", "required: the in-distribution set")
    id_spec = _parse_set(data["id"], "id", "id", origin, default_name="id")
    train = (
        _parse_set(data["train"], "train", "train", origin, default_name="train")
        if data.get("train")
        else None
    )
    ood = data.get("ood")
    if not isinstance(ood, dict):
        raise _err(origin, "ood", "required: a mapping with 'near' and/or 'far' lists")
    bad = sorted(set(ood) - {"near", "far"})
    if bad:
        raise _err(origin, "ood", f"unknown group(s) {', '.join(bad)}; allowed: near, far")
    near = _parse_list(ood.get("near"), "near", "ood.near", origin)
    far = _parse_list(ood.get("far"), "far", "ood.far", origin)
    shift = _parse_list(data.get("domain_shift"), "domain_shift", "domain_shift", origin)
    held = _parse_list(data.get("held_out_classes"), "held_out", "held_out_classes", origin)
    if not near and not far and not held:
        raise _err(origin, "ood", "no OOD sets: give at least one near or far set")
    seen: dict[str, str] = {}
    for spec in [*near, *far, *shift, *held]:
        if spec.name in seen:
            raise _err(origin, spec.key, f"set name {spec.name!r} is used twice (also in {seen[spec.name]})")
        seen[spec.name] = spec.key
    if id_spec.classnames is None and id_spec.classes_from is None:
        raise _err(origin, "id.classnames", "required: a built-in class-name set or a class-name file")
    templates = data.get("templates", "simple")
    if not isinstance(templates, str):
        raise _err(origin, "templates", "expected a template-set name or file")
    data_root = data.get("data_root")
    if data_root is not None and not isinstance(data_root, str):
        raise _err(origin, "data_root", "expected a path relative to the benchmark file")
    order = data.get("classnames_order")
    if order not in (None, *CLASSNAMES_ORDERS):
        raise _err(origin, "classnames_order", f"expected one of {', '.join(CLASSNAMES_ORDERS)}")
    desc = data.get("description", "") or ""
    return Benchmark(
        name=name.strip(),
        id=id_spec,
        description=str(desc).strip(),
        train=train,
        near=near,
        far=far,
        domain_shift=shift,
        held_out=held,
        templates=templates,
        data_root=data_root,
        origin=origin,
        packaged=packaged,
        classnames_order=order,
    )


def load_benchmark_file(path: str | os.PathLike, packaged: bool = False) -> Benchmark:
    """Read and validate one benchmark YAML file."""
    p = Path(path)
    try:
        if p.is_file() and p.stat().st_size > MAX_YAML_BYTES:
            raise DataError(
                f"{p}: a benchmark file of {p.stat().st_size} bytes is over the {MAX_YAML_BYTES} limit"
            )
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"benchmark file {p.absolute()} does not exist") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{p}: a benchmark file must be UTF-8 text ({e.reason} at byte {e.start})") from None
    except IsADirectoryError:
        raise DataError(f"benchmark file {p.absolute()} is a folder; pass the YAML file") from None
    data = load_yaml(text, origin=str(p))
    return parse_benchmark(data, origin=str(p.absolute()), packaged=packaged)


# ---------------------------------------------------------------------- registry

BENCHMARKS: Registry[Benchmark] = Registry("benchmark")


def _packaged_files() -> list[Path]:
    folder = resources.files("vlmood").joinpath("resources", "benchmarks")
    try:
        entries = list(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(Path(str(e)) for e in entries if e.name.endswith((".yaml", ".yml")))


def _register_packaged() -> None:
    for path in _packaged_files():
        name = path.name.rsplit(".", 1)[0]
        if name not in BENCHMARKS:
            BENCHMARKS.register(name, functools.partial(_load_packaged, str(path), name))


def _load_packaged(path: str, name: str) -> Benchmark:
    bench = load_benchmark_file(path, packaged=True)
    if bench.name != name:
        raise DataError(f"{path}: field 'name': {bench.name!r} must equal the file name {name!r}")
    return bench


_register_packaged()


def list_benchmarks(pattern: str = "*") -> list[str]:
    return BENCHMARKS.list(pattern)


def load_benchmark(name_or_path: str | os.PathLike) -> Benchmark:
    """A registered benchmark by name, or a benchmark YAML file by path."""
    s = str(name_or_path)
    if s.lower().endswith((".yaml", ".yml")) or os.sep in s or Path(s).is_file():
        return load_benchmark_file(s)
    return BENCHMARKS.create(s)


# ---------------------------------------------------------------------- checking


@dataclass
class CheckRow:
    key: str
    name: str
    role: str
    kind: str
    expected: str
    path: str
    exists: bool
    n_images: int | None = None
    n_missing_files: int = 0
    optional: bool = False
    status: str = "ok"  # ok | warn | missing | empty | incomplete | error
    message: str = ""

    @property
    def ready(self) -> bool:
        return self.status in ("ok", "warn")


@dataclass
class CheckReport:
    benchmark: str
    root: str
    rows: list[CheckRow]

    @property
    def ok(self) -> bool:
        """True when every required set is present and readable."""
        return all(r.ready or r.optional for r in self.rows)

    def to_dict(self) -> dict[str, Any]:
        return {
            "benchmark": self.benchmark,
            "root": self.root,
            "ok": self.ok,
            "sets": [dict(vars(r), ready=r.ready) for r in self.rows],
        }


def check_benchmark(
    bench: Benchmark | str, root: str | os.PathLike | None = None, allow_outside_root: bool = False
) -> CheckReport:
    """For every set: the expected path and layout, whether it exists, how many images it has,
    and (for lists and CSVs) how many listed files are missing."""
    if isinstance(bench, str):
        bench = load_benchmark(bench)
    rootp = bench.data_dir(root)
    rows: list[CheckRow] = []
    for spec in bench.sets():
        path = rootp / spec.path
        try:
            expected = bench.expected(spec, rootp)
        except DataError as e:
            expected = f"{path} ({e})"
        row = CheckRow(
            key=spec.key,
            name=spec.name,
            role=spec.role,
            kind=spec.kind,
            expected=expected,
            path=str(path),
            exists=path.exists(),
            optional=spec.optional,
        )
        if not row.exists:
            row.status, row.message = "missing", "not found"
            rows.append(row)
            continue
        try:
            src = bench.resolve_set(spec, rootp, allow_outside_root)
        except DataError as e:
            msg = str(e)
            row.status = "empty" if "no images" in msg or "no entries" in msg or "no rows" in msg else "error"
            row.message = msg
            rows.append(row)
            continue
        row.kind = src.kind if not src.meta.get("flat") else "flat"
        row.n_images = len(src)
        if src.kind in ("list", "csv"):
            missing = [s.path for s in src.samples if not os.path.isfile(s.path)]
            row.n_missing_files = len(missing)
            if missing:
                row.status = "incomplete"
                row.message = f"{len(missing)} of {len(src)} listed files missing, e.g. {missing[0]}"
        if row.status == "ok" and spec.expected_count is not None and len(src) != spec.expected_count:
            row.status = "warn"
            row.message = f"{len(src)} images, expected {spec.expected_count}"
        rows.append(row)
    return CheckReport(benchmark=bench.name, root=str(rootp), rows=rows)


def format_check_report(report: CheckReport) -> str:
    """Plain-text report for ``vlmood data check``."""
    lines = [f"benchmark {report.benchmark}  (data root: {report.root})"]
    width = max((len(r.key) for r in report.rows), default=10)
    for r in report.rows:
        tag = {"ok": "ok", "warn": "WARN"}.get(r.status, r.status.upper())
        if not r.ready and r.optional:
            tag = f"{tag} (optional)"
        count = f"{r.n_images} images" if r.n_images is not None else ""
        lines.append(f"  {'[' + tag + ']':<22} {r.key:<{width}}  {count}")
        lines.append(f"      expected: {r.expected}")
        if r.message and r.status != "missing":
            lines.append(f"      {r.message}")
    required = [r for r in report.rows if not r.optional]
    ready = sum(r.ready for r in required)
    lines.append(
        f"{ready} of {len(required)} required sets ready"
        + (
            f"; {sum(r.ready for r in report.rows if r.optional)} of "
            f"{sum(r.optional for r in report.rows)} optional"
            if any(r.optional for r in report.rows)
            else ""
        )
        + (": OK" if report.ok else ": INCOMPLETE")
    )
    return "\n".join(lines)
