"""The LinUCB bandit's parameters and how one outcome is folded into them (with forgetting).

Split from :mod:`router.state.bandit_store` (the stores that hold a :class:`BanditState`),
which re-exports these names.
"""

from __future__ import annotations

import hashlib
import io
import math
from dataclasses import dataclass, field

import numpy as np


class BanditStoreError(RuntimeError):
    """A store that is unreachable, corrupt, or holds another artifact's bandit."""


_ARRAYS = ("A_inv", "b", "counts", "spend", "reward", "cost_max", "prior_cost_sum", "prior_cost_n")
#: weight of the past in the recent mean quality error (what a detected change shifts by)
EWM_ERROR = 0.7
#: arrays added with forgetting; absent from older snapshots (defaults then)
_OPTIONAL = ("cost_sum", "cost_n", "drift", "resets", "forgetting")


@dataclass(frozen=True)
class Forgetting:
    """How the bandit forgets (see the module docstring); the defaults forget nothing."""

    discount: float = 1.0
    threshold: float = 0.0  # quality CUSUM alarm level (0: no change detection)
    slack: float = 0.1
    shrink: float = 0.05
    cost_threshold: float = 0.0  # log-cost CUSUM alarm level (0: none)
    cost_slack: float = 0.2

    def __post_init__(self) -> None:
        for name in ("discount", "threshold", "slack", "shrink", "cost_threshold", "cost_slack"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float | np.floating):
                raise BanditStoreError(f"forgetting {name} must be a number, got {value!r}")
            if not math.isfinite(value) or value < 0:
                raise BanditStoreError(f"forgetting {name} must be finite and >= 0, got {value}")
        if not 0 < self.discount <= 1:
            raise BanditStoreError(f"forgetting discount must be in (0, 1], got {self.discount}")
        if not 0 < self.shrink <= 1:
            raise BanditStoreError(f"forgetting shrink must be in (0, 1], got {self.shrink}")

    def to_array(self) -> np.ndarray:
        return np.array([self.discount, self.threshold, self.slack, self.shrink,
                         self.cost_threshold, self.cost_slack], dtype=np.float64)

    @classmethod
    def from_array(cls, arr: np.ndarray) -> Forgetting:
        return cls(*(float(v) for v in np.asarray(arr, dtype=np.float64).reshape(-1)[:6]))


@dataclass
class BanditState:
    """Per-arm LinUCB parameters.

    ``A_inv`` (m, d, d) and ``b`` (m, d) are the ridge statistics (prior included);
    ``counts``/``spend``/``reward`` count online outcomes only; ``prior_cost_sum`` and
    ``prior_cost_n`` hold the (weighted) training costs so the running mean cost is
    ``(prior_cost_sum + spend) / (prior_cost_n + counts)``; ``cost_max`` is the largest
    cost seen per arm (an upper estimate for budget reservations). With forgetting,
    ``cost_sum``/``cost_n`` are the discounted running cost sums (prior included) that
    :meth:`mean_cost` divides, ``drift`` (m, 5) the CUSUM statistics (quality up/down,
    log-cost up/down) and the recent mean quality error, ``resets`` the changes flagged per arm and ``forgetting`` the
    :class:`Forgetting` settings as an array.
    """

    A_inv: np.ndarray
    b: np.ndarray
    counts: np.ndarray
    spend: np.ndarray
    reward: np.ndarray
    cost_max: np.ndarray
    prior_cost_sum: np.ndarray
    prior_cost_n: np.ndarray
    version: int = 0
    fingerprint: str = ""
    cost_sum: np.ndarray | None = None
    cost_n: np.ndarray | None = None
    drift: np.ndarray | None = None
    resets: np.ndarray | None = None
    forgetting: np.ndarray | None = None
    _theta: np.ndarray | None = field(default=None, repr=False, compare=False)
    _stale: set[int] = field(default_factory=set, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.A_inv = np.ascontiguousarray(self.A_inv, dtype=np.float64)
        self.b = np.ascontiguousarray(self.b, dtype=np.float64)
        self.counts = np.asarray(self.counts, dtype=np.int64).copy()
        for name in ("spend", "reward", "cost_max", "prior_cost_sum", "prior_cost_n"):
            setattr(self, name, np.asarray(getattr(self, name), dtype=np.float64).copy())
        m, d = self.b.shape
        if self.A_inv.shape != (m, d, d):
            raise BanditStoreError(f"A_inv has shape {self.A_inv.shape}, expected {(m, d, d)}")
        for name in _ARRAYS[2:]:
            if getattr(self, name).shape != (m,):
                raise BanditStoreError(f"{name} must have one entry per arm ({m})")
        if self.cost_sum is None:  # an older state: its running cost is prior + online
            self.cost_sum = self.prior_cost_sum + self.spend
        if self.cost_n is None:
            self.cost_n = self.prior_cost_n + self.counts
        self.cost_sum = np.asarray(self.cost_sum, dtype=np.float64).copy()
        self.cost_n = np.asarray(self.cost_n, dtype=np.float64).copy()
        self.drift = (np.zeros((m, 5)) if self.drift is None
                      else np.asarray(self.drift, dtype=np.float64).copy())
        self.resets = (np.zeros(m, np.int64) if self.resets is None
                       else np.asarray(self.resets, dtype=np.int64).copy())
        self.forgetting = Forgetting.from_array(
            Forgetting().to_array() if self.forgetting is None else self.forgetting).to_array()
        for name, shape in (("cost_sum", (m,)), ("cost_n", (m,)), ("drift", (m, 5)),
                            ("resets", (m,))):
            if getattr(self, name).shape != shape:
                raise BanditStoreError(f"{name} has shape {getattr(self, name).shape}, "
                                       f"expected {shape}")

    @property
    def n_arms(self) -> int:
        return self.b.shape[0]

    @property
    def dim(self) -> int:
        return self.b.shape[1]

    @classmethod
    def from_ridge(
        cls, A: np.ndarray, b: np.ndarray, cost_sum: np.ndarray, cost_n: np.ndarray,
        cost_max: np.ndarray, forgetting: Forgetting | None = None,
    ) -> BanditState:
        """A fresh state from ridge statistics A (m, d, d) and b (m, d)."""
        m = b.shape[0]
        state = cls(
            A_inv=np.linalg.inv(A), b=b, counts=np.zeros(m, np.int64), spend=np.zeros(m),
            reward=np.zeros(m), cost_max=cost_max, prior_cost_sum=cost_sum, prior_cost_n=cost_n,
            forgetting=(forgetting or Forgetting()).to_array(),
        )
        # symmetrise away inversion round-off so every later step starts from a clean matrix
        state.A_inv = np.ascontiguousarray((state.A_inv + state.A_inv.transpose(0, 2, 1)) / 2)
        state.fingerprint = state.digest()
        return state

    def digest(self) -> str:
        """A short hash of the parameters (identifies the prior a store was seeded with)."""
        h = hashlib.sha256()
        for name in _ARRAYS:
            h.update(np.ascontiguousarray(getattr(self, name)).tobytes())
        if not np.array_equal(self.forgetting, Forgetting().to_array()):
            h.update(self.forgetting.tobytes())  # a prior that forgets is another bandit
        return h.hexdigest()[:16]

    # ---- learning -------------------------------------------------------------------------
    def apply(self, arm: int, z: np.ndarray, reward: float, cost: float) -> None:
        """Fold one outcome: change detection and discount (:class:`Forgetting`), then a
        Sherman-Morrison update of A^-1 (O(d^2)) and b."""
        z = np.asarray(z, dtype=np.float64)
        g, h, k, shrink, hc, kc = (float(v) for v in self.forgetting)
        Ainv = self.A_inv[arm]
        st = self.drift[arm]
        if h > 0:  # two-sided CUSUM on the quality error of this arm's posterior mean
            err = reward - min(max(float(z @ (Ainv @ self.b[arm])), 0.0), 1.0)
            st[4] = EWM_ERROR * st[4] + (1 - EWM_ERROR) * err
            st[0] = max(0.0, st[0] + err - k)
            st[1] = max(0.0, st[1] - err - k)
            if st[0] > h or st[1] > h:
                # the change moved the arm as a whole: shift its intercept (the last
                # feature, constant 1) by the recent mean error, theta_bias += e, i.e.
                # b += e * A[:, -1], then A <- shrink * A so later outcomes dominate
                unit = np.zeros(len(z))
                unit[-1] = 1.0
                self.b[arm] += st[4] * np.linalg.solve(Ainv, unit)
                Ainv /= shrink
                self.b[arm] *= shrink
                st[0] = st[1] = st[4] = 0.0
                self.resets[arm] += 1
        if hc > 0 and cost > 0 and self.cost_sum[arm] > 0 and self.cost_n[arm] > 0:
            err = math.log(cost * self.cost_n[arm] / self.cost_sum[arm])
            st[2] = max(0.0, st[2] + err - kc)
            st[3] = max(0.0, st[3] - err - kc)
            if st[2] > hc or st[3] > hc:
                self.cost_sum[arm] *= shrink
                self.cost_n[arm] *= shrink
                st[2] = st[3] = 0.0
                self.resets[arm] += 1
        if g < 1.0:
            Ainv /= g
            self.b[arm] *= g
            self.cost_sum[arm] *= g
            self.cost_n[arm] *= g
        u = Ainv @ z
        denom = 1.0 + float(z @ u)
        Ainv -= np.outer(u, u / denom)
        self.b[arm] += reward * z
        self.cost_sum[arm] += cost
        self.cost_n[arm] += 1.0
        self.counts[arm] += 1
        self.spend[arm] += cost
        self.reward[arm] += reward
        if cost > self.cost_max[arm]:
            self.cost_max[arm] = cost
        self.version += 1
        self._stale.add(arm)

    def theta(self) -> np.ndarray:
        """Ridge coefficients (m, d), recomputed only for arms updated since last call."""
        if self._theta is None:
            self._theta = np.einsum("aij,aj->ai", self.A_inv, self.b)
            self._stale.clear()
        for arm in self._stale:
            self._theta[arm] = self.A_inv[arm] @ self.b[arm]
        self._stale.clear()
        return self._theta

    def mean_cost(self) -> np.ndarray:
        n, total = self.cost_n, self.cost_sum
        return np.divide(total, n, out=np.zeros_like(total), where=n > 0)

    @property
    def forget(self) -> Forgetting:
        return Forgetting.from_array(self.forgetting)

    # ---- (de)serialisation ----------------------------------------------------------------
    def copy(self) -> BanditState:
        return BanditState(
            **{k: getattr(self, k).copy() for k in (*_ARRAYS, *_OPTIONAL)},
            version=self.version, fingerprint=self.fingerprint,
        )

    def to_arrays(self) -> dict[str, np.ndarray]:
        out = {k: getattr(self, k) for k in (*_ARRAYS, *_OPTIONAL)}
        out["version"] = np.asarray(self.version, dtype=np.int64)
        out["fingerprint"] = np.asarray(self.fingerprint)
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> BanditState:
        missing = [k for k in (*_ARRAYS, "version", "fingerprint") if k not in arrays]
        if missing:
            raise BanditStoreError(f"bandit state lacks arrays {missing}")
        return cls(
            **{k: np.array(arrays[k]) for k in _ARRAYS},
            **{k: np.array(arrays[k]) for k in _OPTIONAL if k in arrays},
            version=int(arrays["version"]), fingerprint=str(arrays["fingerprint"]),
        )

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, **self.to_arrays())
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> BanditState:
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                return cls.from_arrays({k: npz[k] for k in npz.files})
        except (OSError, ValueError) as exc:
            raise BanditStoreError(f"unreadable bandit snapshot ({exc})") from exc

    def same_params(self, other: BanditState) -> bool:
        """Bit-identical learned parameters and version."""
        return self.version == other.version and all(
            np.array_equal(getattr(self, k), getattr(other, k)) for k in (*_ARRAYS, *_OPTIONAL)
        )
