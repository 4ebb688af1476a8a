"""Top-k retrieval of image-text pairs from a candidate pool by similarity to a set of queries
(ARF's image-text-pair anchors, methods.md 9), through FAISS.

**Score.** A pool pair's score is its best cosine similarity to any query,
``s_j = max_q <q, p_j>`` (queries: the task's class-name text features, or the fine-tune
images' features; pool: its captions' text features or its images' features, all L2
normalised), and the ``k`` pairs of highest score are kept (ties: the lower pool index first).

**How.** The queries go into a FAISS index (``IndexFlatIP``: exact inner products), and the pool
streams through it in chunks: each chunk is one 1-nearest-neighbour search, whose result is
exactly ``s_j`` and its query, merged into a running top-k. Memory stays at one chunk plus
``k`` rows whatever the pool's size: the pool's features are read from the memory-mapped
feature cache (images) or in cached blocks (captions), never all at once, and no
queries x pool similarity matrix is ever formed. A pool of millions of pairs is one pass over
it. With many queries (at least ``ivf_min``, e.g. a large fine-tune set in ``image`` mode) the
flat index becomes an ``IndexIVFFlat`` (inner product, ``nlist ~ 4 sqrt(Q)`` lists, ``nprobe``
searched), which is approximate; ``nprobe = nlist`` makes it exact again.
:func:`dense_top_k` is the plain NumPy reference (small inputs, tests).

**Pool features** are computed once with the base model and cached: images through
:func:`vlmood.features.extract.extract_features` (keyed, locked, resumable chunks), captions
through :func:`vlmood.features.text.encode_texts` in blocks of ``text_block`` captions (one cache
entry each, so a killed encoding resumes at the block it reached).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vlmood.errors import UsageError

log = logging.getLogger(__name__)

#: pool rows per FAISS search
DEFAULT_CHUNK = 65536
#: captions per text-cache entry
DEFAULT_TEXT_BLOCK = 65536
#: queries from which the flat index becomes an IVF index
DEFAULT_IVF_MIN = 200_000
DEFAULT_NPROBE = 32
RETRIEVE_MODES = ("text", "image")


def require_faiss():
    """``import faiss``, or a one-line UsageError with the install command."""
    try:
        import faiss
    except ImportError:
        raise UsageError(
            "ARF's anchor retrieval needs FAISS: pip install faiss-cpu (or pip install 'vlmood[arf]')"
        ) from None
    return faiss


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(n, 1e-12), dtype=np.float32)


@dataclass
class TopK:
    """The retrieved pool rows, best first: pool index, score (cosine) and nearest query."""

    index: np.ndarray  # int64 [k]
    score: np.ndarray  # float32 [k]
    query: np.ndarray  # int64 [k]
    info: dict[str, Any]

    def __len__(self) -> int:
        return len(self.index)


def _merge(
    best: tuple[np.ndarray, np.ndarray, np.ndarray],
    new: tuple[np.ndarray, np.ndarray, np.ndarray],
    k: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    idx = np.concatenate([best[0], new[0]])
    score = np.concatenate([best[1], new[1]])
    query = np.concatenate([best[2], new[2]])
    order = np.lexsort((idx, -score.astype(np.float64)))[:k]  # score desc, then index asc
    return idx[order], score[order], query[order]


def build_query_index(queries: np.ndarray, ivf_min: int = DEFAULT_IVF_MIN, nprobe: int = DEFAULT_NPROBE):
    """A FAISS inner-product index over the normalised queries: flat (exact) below ``ivf_min``
    queries, IVF above. Returns ``(index, description)``."""
    faiss = require_faiss()
    q = _normalise(queries)
    n, d = q.shape
    if n < ivf_min:
        index = faiss.IndexFlatIP(d)
        index.add(q)
        return index, {"index": "IndexFlatIP", "queries": n}
    nlist = max(1, min(n // 39, int(4 * math.sqrt(n))))  # FAISS wants >= 39 training points per list
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.train(q)
    index.add(q)
    index.nprobe = min(nlist, max(1, int(nprobe)))
    return index, {"index": "IndexIVFFlat", "queries": n, "nlist": nlist, "nprobe": index.nprobe}


def top_k_by_max_similarity(
    queries: np.ndarray,
    pool_blocks: Iterator[tuple[int, np.ndarray]] | Sequence[tuple[int, np.ndarray]],
    k: int,
    chunk: int = DEFAULT_CHUNK,
    ivf_min: int = DEFAULT_IVF_MIN,
    nprobe: int = DEFAULT_NPROBE,
) -> TopK:
    """The ``k`` pool rows of highest ``max_q <q, p>`` (see the module docstring).
    ``pool_blocks``: ``(offset, features [m, D])`` pieces of the pool in order (memory maps are
    read ``chunk`` rows at a time)."""
    if k < 1:
        raise UsageError(f"top_k must be >= 1, got {k}")
    index, desc = build_query_index(queries, ivf_min, nprobe)
    empty = (np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int64))
    best = empty
    seen = 0
    for offset, block in pool_blocks:
        for s in range(0, len(block), chunk):
            x = _normalise(np.asarray(block[s : s + chunk]))
            sims, nearest = index.search(x, 1)
            rows = np.arange(offset + s, offset + s + len(x), dtype=np.int64)
            q = nearest[:, 0].astype(np.int64)
            ok = q >= 0  # IVF: a row whose probed lists hold no query gets -1
            best = _merge(best, (rows[ok], sims[ok, 0].astype(np.float32), q[ok]), k)
            seen += len(x)
    if seen < k:
        raise UsageError(f"top_k={k} is more than the {seen} pairs of the candidate pool; lower top_k")
    return TopK(best[0], best[1], best[2], {**desc, "pool": seen, "k": k, "chunk": chunk})


def dense_top_k(queries: np.ndarray, pool: np.ndarray, k: int) -> TopK:
    """Reference: the same top-k from the full similarity matrix (small inputs only)."""
    sims = _normalise(pool) @ _normalise(queries).T
    score = sims.max(axis=1)
    query = sims.argmax(axis=1).astype(np.int64)
    order = np.lexsort((np.arange(len(score)), -score.astype(np.float64)))[:k]
    return TopK(order.astype(np.int64), score[order].astype(np.float32), query[order], {"index": "dense"})


# ---------------------------------------------------------------------------------------------- pool features
def caption_feature_blocks(
    model,
    captions: Sequence[str],
    cache_root=None,
    block: int = DEFAULT_TEXT_BLOCK,
    progress: bool = True,
) -> Iterator[tuple[int, np.ndarray]]:
    """``(offset, text features)`` of the captions, one cached :func:`encode_texts` call per
    block of ``block`` captions."""
    from vlmood.features.text import encode_texts

    n = len(captions)
    for s in range(0, n, block):
        part = list(captions[s : s + block])
        desc = f"pool captions {s:,}-{s + len(part):,} of {n:,}"
        yield s, encode_texts(model, part, cache_root, progress=progress, desc=desc)


def array_blocks(array: np.ndarray, block: int = DEFAULT_CHUNK) -> Iterator[tuple[int, np.ndarray]]:
    """``(offset, rows)`` slices of a (memory-mapped) array."""
    for s in range(0, len(array), block):
        yield s, array[s : s + block]
