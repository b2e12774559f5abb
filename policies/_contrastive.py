"""Shared pieces of the two contrastive routers (:mod:`policies.routerdc`, :mod:`policies.cscr`).

* torch towers (a residual projection head, a small MLP tower), their (de)serialisation to
  plain numpy arrays, a seeded context and the contrastive losses;
* :class:`Neighbourhood`: k-NN over the training embeddings, giving a soft *group*
  posterior (group = task label or k-means cluster, inferred from the neighbours, never
  from a test label), group-mean quality and local mean cost;
* :func:`fit_soft_logistic`: a small ridge logistic regression with soft targets, used to
  map similarities (plus the group prior) to calibrated qualities in [0, 1].

Torch is imported here, so only the contrastive policies pay for it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from policies._numpy_towers import compile_tower
from policies.base import PolicyError

EPS = 1e-6
NUMPY_ROWS = 64  # embed() runs this many rows or fewer in numpy (see embed)


# ---- seeding and (de)serialisation ---------------------------------------------------------
@contextlib.contextmanager
def seeded(seed: int, threads: int | None = None) -> Iterator[None]:
    """Run torch code under ``seed`` without disturbing the global RNG (CPU determinism)."""
    old_threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        if threads:
            torch.set_num_threads(int(threads))
        try:
            yield
        finally:
            torch.set_num_threads(old_threads)


def module_arrays(module: nn.Module, prefix: str) -> dict[str, np.ndarray]:
    """A module's state_dict as float32 numpy arrays under ``prefix``."""
    return {
        f"{prefix}{k}": v.detach().cpu().numpy().astype(np.float32, copy=True)
        for k, v in module.state_dict().items()
    }


def load_module_arrays(module: nn.Module, arrays: dict[str, np.ndarray], prefix: str) -> None:
    """Restore what :func:`module_arrays` wrote; a missing or misshapen tensor raises."""
    from policies.base import ArtifactError

    state = {}
    for key, ref in module.state_dict().items():
        name = f"{prefix}{key}"
        if name not in arrays:
            raise ArtifactError(f"artifact lacks the tensor {name!r}")
        value = torch.from_numpy(np.asarray(arrays[name], dtype=np.float32))
        if tuple(value.shape) != tuple(ref.shape):
            raise ArtifactError(f"tensor {name!r} has shape {tuple(value.shape)}, expected "
                                f"{tuple(ref.shape)}")
        state[key] = value
    module.load_state_dict(state)


# ---- towers ----------------------------------------------------------------------------------
class ResidualHead(nn.Module):
    """Query encoder on top of a frozen sentence embedding: ``normalize(Px + MLP(x))``.

    ``P`` starts as a random orthogonal projection, so an untrained head roughly keeps the
    cosine geometry of the sentence embedding; the MLP learns the routing-specific part.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.skip = nn.Linear(in_dim, out_dim, bias=False)
        nn.init.orthogonal_(self.skip.weight)
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, out_dim)
        )
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.skip(x) + self.mlp(x), dim=-1)


class MLPTower(nn.Module):
    """Two-layer tower ending on the unit sphere (the CSCR model tower)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
            nn.Linear(hidden, out_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(x), dim=-1)


def embed(module: nn.Module, X: np.ndarray, batch: int = 4096) -> np.ndarray:
    """Run a tower in eval mode over a numpy batch; float32 (n, out_dim).

    Up to :data:`NUMPY_ROWS` rows (a routed request) run through the tower's numpy form
    (:mod:`policies._numpy_towers`: the same maths without torch's per-call overhead)."""
    if 0 < len(X) <= NUMPY_ROWS:
        try:
            fn = compile_tower(module)
        except TypeError:  # a layer without a numpy form: torch below
            fn = None
        if fn is not None:
            return fn(np.ascontiguousarray(X, np.float32))  # float32 rows (unit())
    module.eval()
    out = []
    with torch.no_grad():
        for start in range(0, max(len(X), 1), batch):
            chunk = torch.from_numpy(np.ascontiguousarray(X[start : start + batch], np.float32))
            out.append(module(chunk).numpy())
    return np.concatenate(out).astype(np.float32)


# ---- losses ----------------------------------------------------------------------------------
def sample_llm_loss(
    logits: torch.Tensor, quality: torch.Tensor, observed: torch.Tensor, top_k: int,
    last_k: int, noise: torch.Tensor,
) -> torch.Tensor:
    """RouterDC's sample-LLM contrastive loss.

    Per query, the ``top_k`` best-scoring observed models are positives and the ``last_k``
    worst are negatives (ties broken by ``noise``, redrawn every step). Each positive is
    contrasted with the negatives that scored strictly lower:
    ``-log(e^{s_p} / (e^{s_p} + sum_n e^{s_n}))``. Rows where no pair differs are skipped.
    """
    b, m = logits.shape
    rank_key = torch.where(observed, quality + noise, torch.full_like(quality, -1e9))
    order = torch.argsort(rank_key, dim=1, descending=True)
    n_obs = observed.sum(dim=1, keepdim=True)
    position = torch.empty_like(order)
    position.scatter_(1, order, torch.arange(m).expand(b, m))
    pos = observed & (position < top_k)
    neg = observed & (position >= n_obs - last_k) & ~pos
    # pair mask (b, p, n): negative n scored strictly below positive p
    pair = pos[:, :, None] & neg[:, None, :] & (quality[:, None, :] < quality[:, :, None])
    if not pair.any():
        return logits.sum() * 0.0
    neg_logits = torch.where(pair, logits[:, None, :], torch.full_like(pair, -1e9, dtype=logits.dtype))
    denom = torch.logsumexp(torch.cat([logits[:, :, None], neg_logits], dim=2), dim=2)
    per_pos = denom - logits  # (b, p)
    valid = pair.any(dim=2)
    return per_pos[valid].mean()


def supcon_loss(z: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Sample-sample contrastive loss: pull same-cluster queries together (SupCon form)."""
    n = z.shape[0]
    sim = z @ z.T / temperature
    eye = torch.eye(n, dtype=torch.bool)
    sim = sim.masked_fill(eye, -1e9)
    same = (labels[:, None] == labels[None, :]) & ~eye
    has_pos = same.any(dim=1)
    if not has_pos.any():
        return z.sum() * 0.0
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    per_row = -(log_prob * same).sum(dim=1) / same.sum(dim=1).clamp(min=1)
    return per_row[has_pos].mean()


def soft_target_ce(logits: torch.Tensor, target: torch.Tensor, member: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of soft targets over the ``member`` columns of each row.

    ``target`` (b, m) >= 0, zero outside ``member``; rows whose target sums to 0 are skipped.
    """
    mass = target.sum(dim=1)
    valid = mass > 0
    if not valid.any():
        return logits.sum() * 0.0
    masked = logits.masked_fill(~member, -1e9)
    log_p = masked - torch.logsumexp(masked, dim=1, keepdim=True)
    t = target / mass.clamp(min=EPS)[:, None]
    per_row = -(t * torch.where(member, log_p, torch.zeros_like(log_p))).sum(dim=1)
    return per_row[valid].mean()


# ---- clustering and neighbourhoods ---------------------------------------------------------
def kmeans_labels(X: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded k-means on the embeddings: (labels (n,), centroids (k, d))."""
    from sklearn.cluster import KMeans

    k = max(1, min(int(k), len(X)))
    km = KMeans(n_clusters=k, n_init=4, random_state=int(seed)).fit(X.astype(np.float64))
    return km.labels_.astype(np.int64), km.cluster_centers_.astype(np.float32)


def top_neighbours(
    Xq: np.ndarray, Xtrain: np.ndarray, k: int, chunk: int = 2048
) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product k-NN: (ids (nq, k), sims (nq, k)), best first, ties by index."""
    k = max(1, min(int(k), len(Xtrain)))
    ids = np.empty((len(Xq), k), dtype=np.int64)
    sims = np.empty((len(Xq), k), dtype=np.float32)
    for start in range(0, len(Xq), chunk):
        s = Xq[start : start + chunk] @ Xtrain.T
        part = np.argpartition(-s, k - 1, axis=1)[:, :k]
        ps = np.take_along_axis(s, part, axis=1)
        order = np.lexsort((part, -ps), axis=1)
        ids[start : start + chunk] = np.take_along_axis(part, order, axis=1)
        sims[start : start + chunk] = np.take_along_axis(ps, order, axis=1)
    return ids, sims


def masked_mean(values: np.ndarray, axis: int = 0, fallback: np.ndarray | float = 0.0) -> np.ndarray:
    """Mean over non-NaN entries along ``axis``; ``fallback`` where none is observed."""
    obs = ~np.isnan(values)
    cnt = obs.sum(axis=axis)
    tot = np.where(obs, values, 0.0).sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = tot / cnt
    return np.where(cnt > 0, mean, fallback)


class Neighbourhood:
    """k-NN view of the training set: which group a query belongs to, and local cost.

    ``groups`` are task labels or k-means clusters of the training rows. The posterior of a
    query's group is the smoothed vote of its ``k`` nearest training rows; priors computed
    from it shrink per-query estimates toward the group means (the group is inferred from
    the neighbours, never read from a test label).
    """

    def __init__(
        self, X: np.ndarray, groups: np.ndarray, n_groups: int, quality: np.ndarray,
        cost: np.ndarray, k: int = 10, smoothing: float = 1.0,
    ) -> None:
        self.X = np.ascontiguousarray(X, dtype=np.float32)
        self.groups = np.asarray(groups, dtype=np.int64)
        self.n_groups = int(n_groups)
        self.k = int(k)
        self.smoothing = float(smoothing)
        self.quality = np.asarray(quality, dtype=np.float64)
        self.cost = np.asarray(cost, dtype=np.float64)
        counts = np.bincount(self.groups, minlength=self.n_groups).astype(np.float64)
        self.group_freq = counts / max(counts.sum(), 1.0)
        glob_q = masked_mean(self.quality, 0, 0.0)
        glob_c = masked_mean(self.cost, 0, 0.0)
        self.global_cost = glob_c
        self.group_quality = np.stack(
            [masked_mean(self.quality[self.groups == g], 0, glob_q) for g in range(self.n_groups)]
        )
        self.group_cost = np.stack(
            [masked_mean(self.cost[self.groups == g], 0, glob_c) for g in range(self.n_groups)]
        )

    def query(self, Xq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(group posterior (nq, G), local mean cost (nq, m)) for query embeddings."""
        ids, _ = top_neighbours(np.asarray(Xq, np.float32), self.X, self.k)
        votes = np.zeros((len(Xq), self.n_groups))
        np.add.at(votes, (np.repeat(np.arange(len(Xq)), ids.shape[1]), self.groups[ids].ravel()), 1.0)
        post = (votes + self.smoothing * self.group_freq) / (ids.shape[1] + self.smoothing)
        local_cost = masked_mean(self.cost[ids], axis=1, fallback=np.nan)
        group_cost = post @ self.group_cost
        local_cost = np.where(np.isnan(local_cost), group_cost, local_cost)
        return post, local_cost

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}X": self.X, f"{prefix}groups": self.groups,
                f"{prefix}quality": self.quality, f"{prefix}cost": self.cost}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str, n_groups: int, k: int,
                    smoothing: float) -> Neighbourhood:
        return cls(arrays[f"{prefix}X"], arrays[f"{prefix}groups"], n_groups,
                   arrays[f"{prefix}quality"], arrays[f"{prefix}cost"], k, smoothing)


def group_codes(
    X: np.ndarray, tasks: list[str] | None, n_clusters: int, seed: int, nested: bool = False
) -> tuple[np.ndarray, int]:
    """Group id per training row: task labels when given, else k-means clusters.

    With ``nested=True`` and task labels, each task is split further by k-means into about
    ``n_clusters * share of rows`` clusters (at least one), so groups never mix tasks.
    """
    if tasks is None:
        labels, centroids = kmeans_labels(X, n_clusters, seed)
        return labels, len(centroids)
    names = sorted(set(tasks))
    lookup = {t: i for i, t in enumerate(names)}
    codes = np.array([lookup[t] for t in tasks], dtype=np.int64)
    if not nested:
        return codes, len(names)
    out = np.empty(len(codes), dtype=np.int64)
    offset = 0
    for t in range(len(names)):
        rows = np.flatnonzero(codes == t)
        k = max(1, int(round(n_clusters * len(rows) / len(codes))))
        labels, centroids = kmeans_labels(X[rows], k, seed)
        out[rows] = labels + offset
        offset += len(centroids)
    return out, offset


# ---- calibration -----------------------------------------------------------------------------
def logit(p: np.ndarray, clip: float = 0.02) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), clip, 1.0 - clip)
    return np.log(p / (1.0 - p))


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -40, 40)))


def fit_soft_logistic(
    features: np.ndarray, target: np.ndarray, l2: float = 1.0, iters: int = 50
) -> np.ndarray:
    """Ridge logistic regression on soft targets in [0, 1] (Newton steps).

    ``features`` (n, f) must hold a leading column of ones (the unpenalised intercept).
    Returns the (f,) coefficients. Deterministic, no sklearn (which needs hard labels).
    """
    Fm = np.asarray(features, dtype=np.float64)
    y = np.asarray(target, dtype=np.float64)
    n, f = Fm.shape
    coef = np.zeros(f)
    if n == 0:
        return coef
    mean = float(np.clip(y.mean(), 0.02, 0.98))
    coef[0] = np.log(mean / (1 - mean))
    penalty = np.full(f, float(l2))
    penalty[0] = 1e-6
    for _ in range(iters):
        p = sigmoid(Fm @ coef)
        grad = Fm.T @ (p - y) + penalty * coef
        hess = (Fm * (p * (1 - p))[:, None]).T @ Fm + np.diag(penalty)
        step = np.linalg.solve(hess, grad)
        coef -= step
        if np.abs(step).max() < 1e-7:
            break
    return coef


# ---- parameter checks ----------------------------------------------------------------------
def check_positive(name: str, policy: str, value: float, integer: bool = False,
                   allow_zero: bool = False) -> float | int:
    """A finite number > 0 (or >= 0), else a PolicyError naming the parameter."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise PolicyError(f"{policy}: {name} must be a number, got {value!r}") from None
    ok = np.isfinite(number) and (number >= 0 if allow_zero else number > 0)
    if integer and ok and number != int(number):
        ok = False
    if not ok:
        kind = "an integer" if integer else "a number"
        bound = ">= 0" if allow_zero else "> 0"
        raise PolicyError(f"{policy}: {name} must be {kind} {bound}, got {value!r}")
    return int(number) if integer else number


def stratified_folds(codes: np.ndarray, folds: int, seed: int) -> list[np.ndarray]:
    """Seeded partition of the rows into ``folds`` parts, stratified by ``codes``."""
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in range(folds)]
    offset = 0
    for c in np.unique(codes):
        rows = np.flatnonzero(codes == c)
        rng.shuffle(rows)
        for j, r in enumerate(rows):
            parts[(j + offset) % folds].append(int(r))
        offset += len(rows)
    return [np.array(sorted(p), dtype=np.int64) for p in parts if p]
