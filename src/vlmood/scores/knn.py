"""Cosine k-nearest-neighbour score on ID training embeddings (Sun et al. 2022; PLP's 1-NN).

score(x) = cosine similarity between x and its k-th nearest ID training embedding (higher = more
ID). Both sides are L2-normalised (``normalize=True``). ``k`` defaults to 1, the setting of PLP's
adversarial-OOD evaluation (methods.md §6.5); the KNN paper itself uses larger k (e.g. 50 for
ImageNet), so pass ``k=`` explicitly when reproducing it.

The bank may be a memory map: it is read in blocks of ``bank_chunk_size`` rows and only copied
when it is not already unit-norm. Queries are scored in chunks, keeping a running top-k
(``np.partition``) across bank blocks, so memory is bounded by rows x bank_chunk_size.
"""

from __future__ import annotations

import numpy as np

from vlmood.scores._math import l2_normalize
from vlmood.scores.base import Score, ScoreContext, register_score

MAX_CHUNK_ELEMENTS = 1 << 24


@register_score("knn")
class KNNScore(Score):
    """Cosine similarity to the k-th nearest neighbour among the ID training features."""

    reads = frozenset({"image", "train"})

    def __init__(self, k: int = 1, normalize: bool = True, bank_chunk_size: int = 16384) -> None:
        if int(k) < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k = int(k)
        self.normalize = bool(normalize)
        self.bank_chunk_size = int(bank_chunk_size)

    def fit(self, ctx: ScoreContext) -> KNNScore:
        super().fit(ctx)
        bank = ctx.train_features
        if bank is None:
            raise ValueError("knn needs ID training features (ctx.train_features)")
        if bank.ndim != 2:
            raise ValueError(f"train_features must be [N, D], got shape {bank.shape}")
        if bank.shape[0] < self.k:
            raise ValueError(f"knn with k={self.k} needs at least k training features, got {bank.shape[0]}")
        if self.normalize and not self._unit_norm(bank):
            bank = np.concatenate(
                [
                    l2_normalize(bank[s : s + self.bank_chunk_size])
                    for s in range(0, bank.shape[0], self.bank_chunk_size)
                ]
            )
        self.bank = bank
        return self

    def _unit_norm(self, bank: np.ndarray, tol: float = 1e-3) -> bool:
        for s in range(0, bank.shape[0], self.bank_chunk_size):
            n = np.linalg.norm(np.asarray(bank[s : s + self.bank_chunk_size], dtype=np.float32), axis=1)
            if np.any(np.abs(n - 1.0) > tol):
                return False
        return True

    def _rows_per_chunk(self, image, patch) -> int:
        width = min(self.bank.shape[0], self.bank_chunk_size) + self.k
        return max(1, min(self.chunk_size, MAX_CHUNK_ELEMENTS // width))

    def _score_chunk(self, feats: dict[str, np.ndarray]) -> np.ndarray:
        q = feats["image"]
        if q.shape[1] != self.bank.shape[1]:
            raise ValueError(
                f"image features have dim {q.shape[1]} but the kNN bank has dim {self.bank.shape[1]}"
            )
        if self.normalize:
            q = l2_normalize(q)
        k = self.k
        best: np.ndarray | None = None
        for s in range(0, self.bank.shape[0], self.bank_chunk_size):
            block = np.asarray(self.bank[s : s + self.bank_chunk_size], dtype=np.float32)
            sims = q @ block.T
            if k == 1:
                m = sims.max(axis=1)
                best = m if best is None else np.maximum(best, m)
                continue
            cand = sims if best is None else np.concatenate([best, sims], axis=1)
            kk = min(k, cand.shape[1])
            best = np.partition(cand, cand.shape[1] - kk, axis=1)[:, cand.shape[1] - kk :]
        assert best is not None
        kth = best if k == 1 else best.min(axis=1)
        return kth.astype(np.float64)
