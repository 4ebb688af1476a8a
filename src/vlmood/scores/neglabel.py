"""NegLabel: negative-label mining from a large vocabulary + grouped ID-mass score (methods.md §4).

Mining (``fit``):

1. Candidates: WordNet 3.0 nouns and adjectives packaged with vlmood
   (:func:`load_wordnet_vocabulary`) or a user ``vocabulary``. Candidates equal to an ID class
   name (case-insensitive, stripped) are dropped.
2. Prompts: nouns ``noun_template`` ("the nice {}"), adjectives ``adj_template``
   ("This is a {} photo"); encoded with ``ctx.encode_text`` in batches and L2-normalised.
3. ``d(n)`` = ``np.quantile`` (linear, like ``torch.quantile``) at ``percentile`` over the ID
   classes of cos(t_n, t_c).
4. Nouns and adjectives are sorted *separately* by ascending d (stable sort); the lowest
   ``floor(neg_fraction * count)`` of each kind are kept (nouns first, then adjectives). With
   ``max_negatives`` the two kinds are then truncated proportionally to their sizes.

ID side: NegLabel encodes the ID labels with ``"the nice {}"``. When ``ctx.classnames`` and
``ctx.encode_text`` are both given, the ID labels are re-encoded with ``id_template``;
otherwise (or with ``id_template=None``, or ``ctx.extra["id_features_given"]``: the class
features of a prompt-learning adapter) ``ctx.text_features`` is used as given. Class names, when
given, identify the ID classes (the labels-file check) and are banned from the negatives.

Score (temperature T=0.01 on cosines, i.e. CLIP's x100): with pos = cos to the K ID labels and
neg = cos to the negatives, ``S = sum_{c<=K} softmax([pos, neg] / T)_c``, computed as
``sum exp(pos/T - m) / (sum exp(pos/T - m) + sum exp(neg/T - m))`` with ``m`` the row max: float32
matmul and exponentials, BLAS sums, float64 ratios. Rows whose sums come near float32 underflow
(tiny T) are recomputed exactly in float64, log-domain, with a max shift per group.

Grouping (``ngroup`` > 1): the last ``M mod ngroup`` negatives of the mined order are dropped, the
rest permuted with ``np.random.default_rng(group_seed).permutation`` and split into ``ngroup``
equal groups; S is averaged over groups. This permutation differs from NegLabel's
``torch.randperm`` (seed 0), so group membership (not the method) differs from the official
code; ``ngroup=1`` disables grouping.

Encoding: all candidate prompts (nouns and adjectives) go to ``ctx.encode_text`` in one call
when it is a :class:`vlmood.features.text.TextEncoder` (``handles_progress``): the backend sorts
the whole vocabulary by token length, so batches carry almost no padding, and shows a progress
bar. Any other callable gets slices of ``encode_batch_size`` prompts in order of prompt length,
with a progress bar here (``ctx.extra["progress"] = False`` silences it). Embeddings are
restored to the vocabulary order before ``d`` is computed, so the selection does not depend on
the encoding order. Mining logs the vocabulary size first.

Mined labels can be saved (:meth:`NegLabelScore.save_labels`, JSON) and reused
(``labels_file=``); the file carries a hash of the ID class names and is refused for other
classes. With ``ctx.cache_dir`` set, ``fit`` writes ``neglabel_<hash>.json`` there.
``labels_file=`` also takes NegLabel's released negative-label text files
(``selected_neg_labels_in1k_10k.txt``): one prompt per line, encoded as written (lines read
``the nice <label>``); blank lines and ``#`` comments are skipped, repeated prompts (case and
spacing ignored) are kept once. A text file names no ID classes, so it is not checked against
them. The file's sha256 is recorded in the score's parameters (``labels_file_sha256``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from vlmood.data.templates import render
from vlmood.errors import UsageError
from vlmood.scores._math import check_temperature, l2_normalize, logsumexp
from vlmood.scores.base import Score, ScoreContext, register_score
from vlmood.utils import atomic_write_json, sha256_file, sha256_json

log = logging.getLogger(__name__)

LABELS_FORMAT = "vlmood.neglabel.labels/1"
#: bound on the float32 [rows, K + M] logit buffer while scoring (elements)
MAX_CHUNK_ELEMENTS = 1 << 24
#: group sums below this are recomputed in float64 (float32 exp flushes terms below ~1e-38)
_TINY = 1e-25
#: candidates per block when computing their ID-similarity quantiles
_MINE_BLOCK = 4096
#: encodings of at least this many prompts through a plain callable show a progress bar
_PROGRESS_MIN = 2000


def load_wordnet_vocabulary() -> dict[str, list[str]]:
    """The packaged WordNet 3.0 lemmas: ``{"noun": [...], "adj": [...]}``."""
    base = resources.files("vlmood").joinpath("resources", "wordnet")
    out = {}
    for kind, fname in (("noun", "nouns.txt"), ("adj", "adjectives.txt")):
        text = base.joinpath(fname).read_text(encoding="utf-8")
        out[kind] = [w for w in text.splitlines() if w.strip()]
    return out


def _as_vocabulary(vocabulary: Any) -> dict[str, list[str]]:
    if vocabulary is None:
        return load_wordnet_vocabulary()
    if isinstance(vocabulary, dict):
        aliases = {
            "noun": "noun",
            "nouns": "noun",
            "adj": "adj",
            "adjs": "adj",
            "adjective": "adj",
            "adjectives": "adj",
        }
        out: dict[str, list[str]] = {"noun": [], "adj": []}
        for key, words in vocabulary.items():
            if key not in aliases:
                raise ValueError(f"vocabulary keys must be 'noun'/'adj', got {key!r}")
            out[aliases[key]].extend(str(w) for w in words)
        return out
    if isinstance(vocabulary, (str, os.PathLike)):
        return _read_vocabulary_path(Path(vocabulary))
    if isinstance(vocabulary, (list, tuple)) and all(isinstance(w, str) for w in vocabulary):
        return {"noun": list(vocabulary), "adj": []}
    raise TypeError(
        "vocabulary must be None, a list of nouns, a dict {'noun': [...], 'adj': [...]}, a text file of "
        "nouns (one per line) or a folder with nouns.txt and adjectives.txt"
    )


def _read_vocabulary_path(path: Path) -> dict[str, list[str]]:
    """A folder with nouns.txt / adjectives.txt, or one file of nouns (one word per line)."""

    def read(p: Path) -> list[str]:
        return [w.strip() for w in p.read_text(encoding="utf-8").splitlines() if w.strip()]

    if path.is_dir():
        nouns, adjs = path / "nouns.txt", path / "adjectives.txt"
        if not nouns.exists() and not adjs.exists():
            raise FileNotFoundError(f"vocabulary folder {path} has neither nouns.txt nor adjectives.txt")
        return {"noun": read(nouns) if nouns.exists() else [], "adj": read(adjs) if adjs.exists() else []}
    if not path.exists():
        raise FileNotFoundError(f"vocabulary file {path} does not exist")
    return {"noun": read(path), "adj": []}


def _dedupe(words: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(w.strip() for w in words if w.strip()))


def classnames_hash(classnames: Sequence[str]) -> str:
    """Hash identifying an ordered list of ID class names."""
    return sha256_json([str(c) for c in classnames])


def _features_hash(feats: np.ndarray) -> str:
    q = np.round(np.asarray(feats, dtype=np.float64), 4)
    return sha256_json({"shape": list(q.shape), "values": q.ravel().tolist()})[:32]


def encode_texts(
    encode_text: Callable[[list[str]], np.ndarray],
    texts: Sequence[str],
    batch_size: int,
    dim: int | None = None,
    on_batch: Callable[[int], object] | None = None,
) -> np.ndarray:
    """Encode ``texts`` in batches into a float32 [len, D] array of L2-normalised rows
    (``on_batch(n)`` after each batch)."""
    out: np.ndarray | None = None
    for s in range(0, len(texts), batch_size):
        batch = list(texts[s : s + batch_size])
        f = np.asarray(encode_text(batch), dtype=np.float32)
        if f.ndim != 2 or f.shape[0] != len(batch):
            raise ValueError(f"encode_text returned shape {f.shape} for {len(batch)} texts; expected [N, D]")
        if out is None:
            if dim is not None and f.shape[1] != dim:
                raise ValueError(f"encode_text returned dim {f.shape[1]}, ID text features have dim {dim}")
            out = np.empty((len(texts), f.shape[1]), dtype=np.float32)
        out[s : s + len(batch)] = l2_normalize(f)
        if on_batch is not None:
            on_batch(len(batch))
    if out is None:
        return np.zeros((0, dim or 0), dtype=np.float32)
    return out


def linear_quantile_rows(x: np.ndarray, q: float) -> np.ndarray:
    """Row-wise ``np.quantile(x, q, axis=1)`` (method 'linear', as ``torch.quantile``) via
    ``np.partition``; same interpolation formula as numpy (float64), several times faster.
    Float32 input gives the quantile of its exact float64 values."""
    n = x.shape[1]
    h = (n - 1) * q
    lo = int(np.floor(h))
    hi = min(lo + 1, n - 1)
    part = np.partition(x, lo, axis=1)  # one kth: much faster than partitioning at [lo, hi]
    a = part[:, lo].astype(np.float64)
    b = part[:, hi:].min(axis=1).astype(np.float64) if hi > lo else a
    t = h - lo
    diff = b - a
    return b - diff * (1.0 - t) if t >= 0.5 else a + diff * t


def _quantile_sims(cand: np.ndarray, id_feats: np.ndarray, q: float) -> np.ndarray:
    """d(n) = quantile_q over ID classes of cos(cand_n, id_c), computed in blocks; float64."""
    out = np.empty(cand.shape[0], dtype=np.float64)
    id_t = np.ascontiguousarray(id_feats.T)
    for s in range(0, cand.shape[0], _MINE_BLOCK):
        out[s : s + _MINE_BLOCK] = linear_quantile_rows(cand[s : s + _MINE_BLOCK] @ id_t, q)
    return out


@register_score("neglabel")
class NegLabelScore(Score):
    """NegLabel (Jiang et al., ICLR 2024): ID mass against mined negative labels, grouped.

    Reads the image features (scored against the negatives) and the per-image ``positives``
    (cosines to the ID classes in the text space); see :meth:`score_inputs`."""

    reads = frozenset({"image", "positives"})

    def __init__(
        self,
        temperature: float = 0.01,
        percentile: float = 0.95,
        neg_fraction: float = 0.15,
        ngroup: int = 100,
        group_seed: int = 0,
        id_template: str | None = "the nice {}",
        noun_template: str = "the nice {}",
        adj_template: str = "This is a {} photo",
        vocabulary: Any = None,
        labels_file: str | None = None,
        max_negatives: int | None = None,
        encode_batch_size: int = 1000,
    ) -> None:
        self.temperature = check_temperature(temperature)
        if not 0.0 <= percentile <= 1.0:
            raise ValueError(f"percentile must be in [0, 1], got {percentile}")
        if not 0.0 < neg_fraction <= 1.0:
            raise ValueError(f"neg_fraction must be in (0, 1], got {neg_fraction}")
        if int(ngroup) < 1:
            raise ValueError(f"ngroup must be >= 1, got {ngroup}")
        if max_negatives is not None and int(max_negatives) < 1:
            raise ValueError(f"max_negatives must be >= 1 or None, got {max_negatives}")
        self.percentile = float(percentile)
        self.neg_fraction = float(neg_fraction)
        self.ngroup = int(ngroup)
        self.group_seed = int(group_seed)
        self.id_template = id_template
        self.noun_template = noun_template
        self.adj_template = adj_template
        self.vocabulary = vocabulary
        self.labels_file = None if labels_file is None else str(labels_file)
        if self.labels_file is not None and not Path(self.labels_file).is_file():
            raise UsageError(  # before any image is encoded
                f"neglabel parameter labels_file: {self.labels_file} does not exist or is not a file; give a "
                "labels file written by vlmood (JSON) or NegLabel's released list (one label per line)"
            )
        self.max_negatives = None if max_negatives is None else int(max_negatives)
        self.encode_batch_size = int(encode_batch_size)
        self._saved_path: str | None = None
        self._labels_format: str | None = None
        self._labels_dups = 0

    # ------------------------------------------------------------------ parameters
    def params(self) -> dict[str, Any]:
        p = super().params()
        p.pop("encode_batch_size", None)
        if self.vocabulary is None:
            p["vocabulary"] = "vlmood:wordnet-3.0"
        else:
            voc = _as_vocabulary(self.vocabulary)
            p["vocabulary"] = {
                "sha256": sha256_json(voc),
                "n_noun": len(voc["noun"]),
                "n_adj": len(voc["adj"]),
            }
        if self.labels_file is not None:
            path = Path(self.labels_file)
            p["labels_file_sha256"] = sha256_file(path) if path.is_file() else None
        return p

    def artifacts(self) -> dict[str, Any]:
        if not hasattr(self, "labels"):
            return {}
        return {
            "neglabel_labels_file": self._saved_path or self.labels_file,
            "neglabel_num_negatives": len(self.labels),
            "neglabel_num_used": int(self._neg_count_used),
            "neglabel_num_nouns": int(sum(k == "noun" for k in self.kinds)),
            "neglabel_num_adjs": int(sum(k == "adj" for k in self.kinds)),
            "neglabel_id_sha256": self.id_hash,
            "neglabel_id_encoding": self.id_encoding,
            **({"neglabel_labels_file_format": self._labels_format} if self.labels_file is not None else {}),
            **({"neglabel_labels_duplicates": self._labels_dups} if self._labels_dups else {}),
        }

    # ------------------------------------------------------------------ encoding
    def _encode(self, ctx: ScoreContext, prompts: Sequence[str], dim: int | None, desc: str) -> np.ndarray:
        """Normalised float32 [len(prompts), D] in the order of ``prompts`` (module docstring)."""
        enc = ctx.encode_text
        assert enc is not None
        prompts = list(prompts)
        if getattr(enc, "handles_progress", False):
            f = np.asarray(enc(prompts, desc=desc), dtype=np.float32)
            if f.ndim != 2 or f.shape[0] != len(prompts):
                raise ValueError(
                    f"encode_text returned shape {f.shape} for {len(prompts)} texts; expected [N, D]"
                )
            if dim is not None and len(prompts) and f.shape[1] != dim:
                raise ValueError(f"encode_text returned dim {f.shape[1]}, ID text features have dim {dim}")
            return l2_normalize(f) if len(prompts) else np.zeros((0, dim or 0), dtype=np.float32)
        from tqdm.auto import tqdm

        # similar lengths in one call: a backend that trims padding per call wastes little
        order = np.argsort(
            np.fromiter((len(p) for p in prompts), dtype=np.int64, count=len(prompts)), kind="stable"
        )
        show = len(prompts) >= _PROGRESS_MIN and bool(ctx.extra.get("progress", True))
        bar = tqdm(total=len(prompts), desc=desc, unit="prompt", disable=not show, leave=False)
        try:
            feats = encode_texts(enc, [prompts[i] for i in order], self.encode_batch_size, dim, bar.update)
        finally:
            bar.close()
        out = np.empty_like(feats)
        out[order] = feats
        return out

    # ------------------------------------------------------------------ fit
    def fit(self, ctx: ScoreContext) -> NegLabelScore:
        text = np.asarray(ctx.text_features, dtype=np.float32)
        if text.ndim != 2:
            raise ValueError(f"text_features must be [K, D], got shape {text.shape}")
        classnames = list(ctx.classnames) if ctx.classnames is not None else None
        if classnames is not None and len(classnames) != text.shape[0]:
            raise ValueError(f"{len(classnames)} class names but {text.shape[0]} text features")
        dim = text.shape[1]
        given = bool(ctx.extra.get("id_features_given"))  # e.g. a prompt adapter's class features
        if (
            not given
            and self.id_template is not None
            and classnames is not None
            and ctx.encode_text is not None
        ):
            prompts = [render(self.id_template, c) for c in classnames]
            pos = self._encode(ctx, prompts, dim, "NegLabel ID labels")
            self.id_encoding = f"encode_text(id_template={self.id_template!r})"
        else:
            pos = l2_normalize(text)
            self.id_encoding = "ctx.text_features"
        self.text_features = pos
        self.id_hash = (
            classnames_hash(classnames) if classnames is not None else "features:" + _features_hash(text)
        )

        if self.labels_file is not None:
            self._load_and_encode(self.labels_file, ctx, dim)
        else:
            self._mine(ctx, classnames, pos)
        self._build_groups()
        if ctx.cache_dir is not None:
            key = sha256_json(
                {
                    "id": self.id_hash,
                    "id_features": _features_hash(pos),
                    "params": self.params(),
                    "labels": sha256_json(self.prompts),
                }
            )[:16]
            path = Path(ctx.cache_dir) / f"neglabel_{key}.json"
            self.save_labels(path)
        return self

    def _mine(self, ctx: ScoreContext, classnames: list[str] | None, pos: np.ndarray) -> None:
        if ctx.encode_text is None:
            raise ValueError(
                "NegLabel needs ctx.encode_text to mine negative labels (or labels_file= with previously mined labels)"
            )
        voc = _as_vocabulary(self.vocabulary)
        banned = {c.strip().lower() for c in classnames} if classnames is not None else set()
        labels: list[str] = []
        kinds: list[str] = []
        prompts: list[str] = []
        dists: list[float] = []
        feats: list[np.ndarray] = []
        per_kind = []
        cands = []
        for kind, template in (("noun", self.noun_template), ("adj", self.adj_template)):
            words = [w for w in _dedupe(voc[kind]) if w.lower() not in banned]
            keep = int(math.floor(self.neg_fraction * len(words) + 1e-9))
            cands.append((kind, template, words if keep else [], keep))
        # every candidate prompt in one encoding (one length-sorted pass, one progress bar)
        all_prompts = [render(template, w) for _, template, words, _ in cands for w in words]
        n_noun, n_adj = len(cands[0][2]), len(cands[1][2])
        name = getattr(ctx.encode_text, "name", None)
        log.info(
            "NegLabel: encoding %s candidate labels (%s nouns + %s adjectives)%s",
            f"{len(all_prompts):,}",
            f"{n_noun:,}",
            f"{n_adj:,}",
            f" with {name}" if name else "",
        )
        all_feats = self._encode(ctx, all_prompts, pos.shape[1], "NegLabel candidates")
        start = 0
        for kind, template, words, keep in cands:
            kfeats = all_feats[start : start + len(words)]
            start += len(words)
            if keep == 0:
                per_kind.append((kind, template, [], np.zeros(0), np.zeros((0, pos.shape[1]), np.float32)))
                continue
            d = _quantile_sims(kfeats, pos, self.percentile)
            order = np.argsort(d, kind="stable")[:keep]
            per_kind.append((kind, template, [words[i] for i in order], d[order], kfeats[order]))
        total = sum(len(x[2]) for x in per_kind)
        if total == 0:
            raise ValueError(
                "NegLabel mined no negative labels: the vocabulary is empty or neg_fraction too small"
            )
        if self.max_negatives is not None and total > self.max_negatives:
            quotas = [len(x[2]) * self.max_negatives // total for x in per_kind]
            quotas[0] += self.max_negatives - sum(quotas)  # remainder to the nouns
        else:
            quotas = [len(x[2]) for x in per_kind]
        for (kind, template, words, d, kfeats), quota in zip(per_kind, quotas):
            labels += words[:quota]
            kinds += [kind] * min(quota, len(words))
            prompts += [render(template, w) for w in words[:quota]]
            dists += [float(v) for v in d[:quota]]
            feats.append(kfeats[:quota])
        self.labels, self.kinds, self.prompts, self.distances = labels, kinds, prompts, dists
        self._neg_features = np.concatenate(feats, axis=0)

    def _load_and_encode(self, path: str, ctx: ScoreContext, dim: int) -> None:
        data = load_labels(path, self.noun_template, self.adj_template)
        self._labels_format = data["format_kind"]
        self._labels_dups = int(data.get("duplicates", 0))
        if self._labels_dups:
            log.warning("NegLabel labels file %s: %d repeated labels kept once", path, self._labels_dups)
        if data["id_sha256"] is not None and data["id_sha256"] != self.id_hash:
            raise ValueError(
                f"NegLabel labels file {path} was mined for other ID classes "
                f"(its ID hash {data['id_sha256'][:16]}..., this context's {self.id_hash[:16]}...; "
                f"{data.get('num_id_classes')} vs {len(self.text_features)} classes). Mine again for these classes."
            )
        if ctx.encode_text is None:
            raise ValueError("NegLabel labels_file= needs ctx.encode_text to encode the stored label prompts")
        self.labels, self.kinds, self.prompts = data["labels"], data["kinds"], data["prompts"]
        self.distances = data.get("distances")
        log.info(
            "NegLabel: %s negative labels from %s (%s)", f"{len(self.prompts):,}", path, self._labels_format
        )
        self._neg_features = self._encode(ctx, self.prompts, dim, "NegLabel labels")

    def _build_groups(self) -> None:
        m = len(self.labels)
        if self.ngroup > 1:
            if m < self.ngroup:
                raise ValueError(f"NegLabel has {m} negative labels, fewer than ngroup={self.ngroup}")
            used = m - m % self.ngroup
            order = np.random.default_rng(self.group_seed).permutation(used)
        else:
            order = np.arange(m)
        self.group_order = order
        self._neg_count_used = order.size
        inv_t = np.float32(1.0 / self.temperature)
        # [D, K] and [D, M_used] weights, already divided by T; negatives in group-contiguous order
        self._wpos = np.ascontiguousarray(self.text_features.T * inv_t, dtype=np.float32)
        self._wneg = np.ascontiguousarray(self._neg_features[order].T * inv_t, dtype=np.float32)
        self._ones_k = np.ones(self._wpos.shape[1], dtype=np.float32)
        self._ones_g = np.ones(order.size // max(self.ngroup, 1), dtype=np.float32)

    # ------------------------------------------------------------------ labels I/O
    def save_labels(self, path: str | Path) -> str:
        """Write the mined labels (strings, kinds, prompts, d values, parameters, ID hash) as JSON."""
        if not hasattr(self, "labels"):
            raise RuntimeError("NegLabelScore: call fit(ctx) before save_labels()")
        payload = {
            "format": LABELS_FORMAT,
            "id_sha256": self.id_hash,
            "num_id_classes": int(self.text_features.shape[0]),
            "id_encoding": self.id_encoding,
            "params": self.params(),
            "num_labels": len(self.labels),
            "labels": list(self.labels),
            "kinds": list(self.kinds),
            "prompts": list(self.prompts),
            "distances": None if self.distances is None else [float(x) for x in self.distances],
        }
        atomic_write_json(path, payload, indent=1)
        self._saved_path = str(path)
        return str(path)

    # ------------------------------------------------------------------ scoring
    def _rows_per_chunk(self, image, patch) -> int:
        width = self._wpos.shape[1] + self._wneg.shape[1]
        return max(1, min(self.chunk_size, MAX_CHUNK_ELEMENTS // width))

    def _score_chunk(self, feats: dict[str, np.ndarray]) -> np.ndarray:
        x = feats["image"]
        if x.shape[1] != self._wpos.shape[0]:
            raise ValueError(
                f"image features have dim {x.shape[1]} but text features have dim {self._wpos.shape[0]}"
            )
        return self._combine(x, x @ self._wpos, given=False)  # [n, K] cos / T (a new float32 buffer)

    def score_inputs(self, inputs) -> np.ndarray:
        """ID scores through a class head. A head with image-independent class text features
        (``inputs`` has ``text_features``: zero-shot, prompt adapters) gives its positives as
        cosines to those features, which went into ``fit`` as the ID side (zero-shot: the class
        names re-encoded with ``id_template``), so they are computed here as in :meth:`score`;
        otherwise (CoCoOp) the head's per-image ``positives`` are the positive side
        (:meth:`score_with_positive`)."""
        if "text_features" in inputs:
            return self.score(inputs["image"])
        if "positives" not in inputs:
            raise ValueError("NegLabel reads 'positives' (per-image ID-class cosines), which the inputs lack")
        return self.score_with_positive(inputs["image"], inputs["positives"])

    def score_with_positive(self, image: np.ndarray, positive: np.ndarray) -> np.ndarray:
        """ID scores when the ID-class cosines come from elsewhere: ``positive`` [N, K] unscaled
        cosines per image (e.g. CoCoOp's image-conditioned class features) replace
        ``image @ text_features.T``; the negatives are still scored on ``image``."""
        if not hasattr(self, "_wneg"):
            raise RuntimeError("NegLabelScore: call fit(ctx) before score_with_positive()")
        if positive.ndim != 2 or positive.shape != (image.shape[0], self._wpos.shape[1]):
            raise ValueError(
                f"positive cosines must be [N={image.shape[0]}, K={self._wpos.shape[1]}], got {positive.shape}"
            )
        n = image.shape[0]
        out = np.empty(n, dtype=np.float64)
        rows = self._rows_per_chunk(image, None)
        inv_t = np.float32(1.0 / self.temperature)
        for s in range(0, n, rows):
            x = np.asarray(image[s : s + rows], dtype=np.float32)
            zp = np.multiply(np.asarray(positive[s : s + rows], dtype=np.float32), inv_t, dtype=np.float32)
            out[s : s + rows] = self._combine(x, zp, given=True)
        return out

    def _combine(self, x: np.ndarray, zp: np.ndarray, given: bool) -> np.ndarray:
        """S from ``zp`` = positive cosines / T [n, K] (overwritten) and image features ``x``;
        ``given``: ``zp`` did not come from ``x`` (the exact path then needs a copy of it)."""
        n, g = x.shape[0], max(self.ngroup, 1)
        zp_given = zp.copy() if given else None
        zn = x @ self._wneg  # [n, M_used]
        # one shift per row (the row max): exp in float32, sums by BLAS, ratios in float64
        m = np.maximum(zp.max(axis=1), zn.max(axis=1))[:, None]
        np.subtract(zp, m, out=zp)
        np.exp(zp, out=zp)
        np.subtract(zn, m, out=zn)
        np.exp(zn, out=zn)
        sp = (zp @ self._ones_k).astype(np.float64)  # [n]
        sn = (zn.reshape(n * g, -1) @ self._ones_g).astype(np.float64).reshape(n, g)
        out = np.mean(sp[:, None] / (sp[:, None] + sn), axis=1)
        # sums this small lost mass to float32 underflow (tiny T or extreme features): redo exactly
        bad = (sp < _TINY) | (sn.min(axis=1) < _TINY)
        if bad.any():
            out[bad] = self._score_exact(x[bad], None if zp_given is None else zp_given[bad])
        return out

    def _score_exact(self, x: np.ndarray, zpos: np.ndarray | None = None) -> np.ndarray:
        """Log-domain float64 S with a max shift per group (slow path for underflowing rows);
        ``zpos``: given positive cosines / T (else ``x @ W_pos``)."""
        x = x.astype(np.float64)
        zp = x @ self._wpos.astype(np.float64) if zpos is None else zpos.astype(np.float64)
        lse_pos = logsumexp(zp, axis=1)
        zn = (x @ self._wneg.astype(np.float64)).reshape(x.shape[0], max(self.ngroup, 1), -1)
        lse_neg = logsumexp(zn, axis=2)
        # S_g = e^A / (e^A + e^B_g) = sigmoid(A - B_g)
        return np.mean(np.exp(-np.logaddexp(0.0, lse_neg - lse_pos[:, None])), axis=1)


def _template_re(template: str) -> re.Pattern[str] | None:
    """``template`` with its ``{}`` as a capture group (case-insensitive, spacing-tolerant)."""
    if template.count("{}") != 1:
        return None
    pre, post = (re.escape(re.sub(r"\s+", " ", x)) for x in template.split("{}"))
    return re.compile(rf"^{pre}(.+?){post}$", re.IGNORECASE)


def read_labels_text(
    text: str, noun_template: str = "the nice {}", adj_template: str = "This is a {} photo"
) -> dict[str, Any]:
    """NegLabel's released label files: one prompt per line (``the nice <label>``), encoded as
    written. Blank lines and ``#`` comments are skipped; a prompt repeated (case and spacing
    ignored) is kept once, at its first line. A line matching ``noun_template`` /
    ``adj_template`` gets that kind and its label; others are of kind ``"given"``."""
    patterns = [(k, _template_re(t)) for k, t in (("noun", noun_template), ("adj", adj_template))]
    labels: list[str] = []
    kinds: list[str] = []
    prompts: list[str] = []
    seen: set[str] = set()
    dups = 0
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        norm = " ".join(line.split()).lower()
        if norm in seen:
            dups += 1
            continue
        seen.add(norm)
        kind, label = "given", line
        for k, pat in patterns:
            m = pat.match(" ".join(line.split())) if pat is not None else None
            if m:
                kind, label = k, m.group(1)
                break
        labels.append(label)
        kinds.append(kind)
        prompts.append(line)
    return {"labels": labels, "kinds": kinds, "prompts": prompts, "duplicates": dups}


def load_labels(
    path: str | Path, noun_template: str = "the nice {}", adj_template: str = "This is a {} photo"
) -> dict[str, Any]:
    """Read and validate NegLabel labels: a JSON written by :meth:`NegLabelScore.save_labels`
    (``format_kind`` "json"), or a text file with one prompt per line (``format_kind`` "text",
    :func:`read_labels_text`; ``id_sha256`` None). ``sha256`` is the file's hash."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"NegLabel labels file not found: {path}")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"NegLabel labels file {path} is not UTF-8 text: {e}") from None
    digest = sha256_file(path)
    if not text.lstrip().startswith(("{", "[")):
        data = read_labels_text(text, noun_template, adj_template)
        if not data["labels"]:
            raise ValueError(f"NegLabel labels file {path} has no labels (only blank lines or # comments)")
        return {
            **data,
            "format_kind": "text",
            "sha256": digest,
            "id_sha256": None,
            "num_id_classes": None,
            "distances": None,
        }
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"NegLabel labels file {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict) or data.get("format") != LABELS_FORMAT:
        raise ValueError(f"{path} is not a vlmood NegLabel labels file (format {LABELS_FORMAT!r})")
    n = len(data.get("labels", []))
    if n == 0 or len(data.get("kinds", [])) != n or len(data.get("prompts", [])) != n:
        raise ValueError(
            f"NegLabel labels file {path} is corrupt: labels/kinds/prompts lengths differ or are empty"
        )
    return {**data, "format_kind": "json", "sha256": digest}
