"""How familiar a query is to the training data: similarity to its nearest train prompts.

``Familiarity.fit(X)`` keeps the (L2-normalised) training embeddings in a
:class:`router.index.VectorIndex`; ``score(Xq)`` is, per query, the mean cosine similarity
to its ``k`` nearest training prompts (higher = more familiar; 1 = a duplicate of ``k``
train prompts). Scoring the training rows themselves needs ``exclude_self=True``, so a
row does not count itself among its neighbours.

A raw similarity depends on the encoder, so :meth:`Familiarity.quantile` also reads a score
against the training rows' own (leave-self-out) scores: the share of training prompts that
are *less* familiar to the rest of the training data than the query is to all of it (0 = as
unfamiliar as nothing in training, 0.5 = a typical training prompt).

Used by the anchor's distance-aware backoff (:mod:`policies._anchor`) and by the online
policies that fall back toward the best single model far from the training data. State is
plain arrays (:meth:`arrays` / :meth:`from_arrays`), saved with a policy's artifact.
"""

from __future__ import annotations

import numpy as np

FAMILIARITY_K = 10  # nearest training prompts averaged into a score
REFERENCE_POINTS = 101  # quantiles of the training rows' own scores kept for quantile()


class Familiarity:
    """Mean cosine similarity of a query to its ``k`` nearest training prompts."""

    def __init__(self, X: np.ndarray, k: int = FAMILIARITY_K,
                 reference: np.ndarray | None = None) -> None:
        if int(k) < 1:
            raise ValueError(f"familiarity: k must be >= 1, got {k!r}")
        X = unit(X)
        if X.ndim != 2 or len(X) == 0:
            raise ValueError(f"familiarity: need a non-empty (n, dim) array, got {X.shape}")
        self.X = X
        self.k = int(k)
        self._index = None  # router.index.VectorIndex over X, built at the first search
        self._reference = None if reference is None else np.asarray(reference, np.float64)

    @classmethod
    def fit(cls, X: np.ndarray, k: int = FAMILIARITY_K) -> Familiarity:
        return cls(X, k)

    def __len__(self) -> int:
        return len(self.X)

    # ---- searching --------------------------------------------------------------------
    def search(self, Xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, ids), each (n, min(k, n_train)), best first (FAISS: exact while
        small, HNSW at scale). Shared with the anchor's task vote: one search serves both."""
        if self._index is None:
            from router.index import VectorIndex

            index = VectorIndex(self.X.shape[1], kind="auto")
            index.add(self.X)
            if index.vectors_are_view:  # keep one copy of the vectors: the index's
                self.X = index.stored_vectors()
            self._index = index
        Xq = unit(Xq)
        k = min(int(k), len(self.X))
        if len(Xq) == 0:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
        sims, ids = self._index.search(Xq, k)
        return np.asarray(sims), np.asarray(ids)

    # ---- scoring ----------------------------------------------------------------------
    def score(self, Xq: np.ndarray, exclude_self: bool = False) -> np.ndarray:
        """(n,) mean similarity to the ``k`` nearest training prompts. ``exclude_self``:
        ``Xq`` are the training rows in order, and row i does not count itself."""
        if not exclude_self:
            return self.from_similarities(self.search(Xq, self.k)[0])
        if len(Xq) != len(self.X):
            raise ValueError("familiarity: exclude_self needs the training rows themselves")
        sims, ids = self.search(Xq, self.k + 1)
        if sims.shape[1] == 1:  # a single training row: nothing else to compare with
            return np.zeros(len(ids))
        own = ids == np.arange(len(ids))[:, None]
        # drop the row's own hit (or, if the index missed it, the farthest neighbour)
        drop = np.where(own.any(axis=1), own.argmax(axis=1), sims.shape[1] - 1)
        keep = np.ones(sims.shape, dtype=bool)
        keep[np.arange(len(ids)), drop] = False
        return sims[keep].reshape(len(ids), -1)[:, : self.k].astype(np.float64).mean(axis=1)

    def from_similarities(self, sims: np.ndarray) -> np.ndarray:
        """The score from a search's similarities (n, >= k), best first."""
        sims = np.asarray(sims, dtype=np.float64)
        if sims.ndim != 2:
            raise ValueError(f"familiarity: similarities must be (n, k), got {sims.shape}")
        return sims[:, : self.k].mean(axis=1) if sims.shape[1] else np.zeros(len(sims))

    def quantile(self, scores: np.ndarray) -> np.ndarray:
        """Share of training rows (leave-self-out) less familiar than each score, in [0, 1]."""
        ref = self.reference
        return np.interp(np.asarray(scores, dtype=np.float64), ref,
                         np.linspace(0.0, 1.0, len(ref)))

    @property
    def reference(self) -> np.ndarray:
        """Quantiles of the training rows' leave-self-out scores (computed when first
        needed: one search of the training rows against themselves)."""
        if self._reference is None:
            if len(self.X) < 2:
                self._reference = np.zeros(REFERENCE_POINTS)
            else:
                own = self.score(self.X, exclude_self=True)
                self._reference = np.quantile(own, np.linspace(0.0, 1.0, REFERENCE_POINTS))
        return self._reference

    # ---- state ------------------------------------------------------------------------
    def arrays(self, prefix: str = "familiarity_", vectors: bool = True) -> dict[str, np.ndarray]:
        """Plain-array state; ``vectors=False`` leaves out the embeddings (when the owner
        saves them already and passes them back to :meth:`from_arrays`)."""
        out = {f"{prefix}k": np.array(self.k), f"{prefix}reference": self.reference}
        if vectors:
            out[f"{prefix}X"] = self.X
        return out

    @classmethod
    def from_arrays(cls, arrays, prefix: str = "familiarity_",
                    X: np.ndarray | None = None) -> Familiarity:
        """Restore :meth:`arrays` (KeyError when a part is missing)."""
        vectors = arrays[f"{prefix}X"] if X is None else X
        return cls(vectors, int(arrays[f"{prefix}k"]), arrays[f"{prefix}reference"])


def unit(X: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, float32, C-contiguous (zero rows stay zero)."""
    X = np.atleast_2d(np.asarray(X, dtype=np.float32))
    return np.ascontiguousarray(X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12))
