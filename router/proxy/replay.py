"""Replay backends: answer as a dataset's model did, so the whole loop runs offline.

A backend written ``model: replay/<dataset model>`` answers a prompt with that model's
recorded response (RouterBench's ``<model>|model_response``), at its recorded cost
(``<model>|total_cost``) after ``replay.latency_ms``, and grades the answer with the
dataset's correctness; the gateway sends that grade as feedback (source ``replay``) so an
online policy learns from it, ``replay.auto_feedback_delay_seconds`` after the answer
(60 s in ``--demo``) unless the client's own ``POST /v1/feedback`` came first. Prompts are matched by the sha256 of the user message; an
unknown prompt gets the answer recorded for the *nearest* dataset prompt (cosine similarity
of embeddings, when an encoder is available and the similarity reaches
``replay.min_similarity``), else a canned answer -- the response says which
(``router.replay.match`` = ``exact`` | ``nearest`` | ``canned``, header
``x-router-replay-match``).

:func:`build_demo` assembles ``router serve --demo``: the RouterBench subset (or the
generated demo dataset), a policy trained on its train split (cached under the state dir),
and one replay backend per model; when the dataset has recorded responses, also a
cascade (``router-cascade``, policies.cascade) learned from the train split's answers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from router.dataset import DatasetSplit, RoutingDataset
from router.proxy.backends import Backend, Completion, StreamResult
from router.proxy.config import ModelEntry, ReplayConfig
from router.proxy.outcomes import prompt_hash
from router.proxy.schemas import routing_text
from router.proxy.wire import SSEMeter, estimate_prompt_tokens, estimate_tokens_chars

log = logging.getLogger("costroute.gateway")

CANNED = ("[replay] {model} has no recorded answer for this prompt (no dataset prompt is "
          "close enough); this is a canned reply from the replay backend.")


def load_replay_dataset(path: str | os.PathLike[str]) -> RoutingDataset:
    """A routing dataset with responses: a file, or a dir of *_train/*_test (both halves)."""
    from router import datasets

    path = Path(path)
    if path.is_dir():
        split = datasets.load_split(str(path))
        return datasets.concat_datasets([split.train, split.test], split.train.name)
    return datasets.load_dataset(str(path))


class ReplayProvider:
    """Index of a dataset's prompts; makes one :class:`ReplayBackend` per replayed model."""

    def __init__(self, dataset: RoutingDataset, latency_ms: float = 0.0,
                 min_similarity: float = 0.3, embeddings: np.ndarray | None = None,
                 embed: Any = None) -> None:
        self.ds = dataset
        self.latency_ms = float(latency_ms)
        self.min_similarity = float(min_similarity)
        self.index: dict[str, int] = {}
        for i, p in enumerate(dataset.prompts):
            self.index.setdefault(prompt_hash(p.strip()), i)
        self.embeddings = embeddings
        #: ``embed(text) -> vector`` used for unknown prompts (the gateway sets its cached one)
        self.embed = embed
        _, self.fill_cost = dataset.eval_matrices()
        with np.errstate(invalid="ignore"):
            self.max_cost = np.nan_to_num(np.nanmax(dataset.cost, axis=0), nan=0.0)

    @classmethod
    def from_config(cls, cfg: ReplayConfig, encoder: Any = None) -> ReplayProvider:
        if not cfg.dataset:
            raise ValueError("replay.dataset is not set")
        ds = load_replay_dataset(cfg.dataset)
        emb = None
        if encoder is not None:
            emb = encode_prompts(encoder, ds.prompts)
        return cls(ds, cfg.latency_ms, cfg.min_similarity, emb,
                   embed=encoder.encode_one if encoder is not None else None)

    def model_index(self, model: str) -> int:
        try:
            return self.ds.models.index(model)
        except ValueError:
            raise ValueError(f"replay/{model}: not a model of dataset {self.ds.name!r}; it has "
                             f"{self.ds.models}") from None

    def backend(self, entry: ModelEntry, timeout: float) -> ReplayBackend:
        return ReplayBackend(entry, timeout, self)

    def lookup(self, text: str) -> tuple[int | None, str, float | None]:
        """(row, match kind, similarity) of the dataset prompt answering ``text``."""
        row = self.index.get(prompt_hash(text.strip()))
        if row is not None:
            return row, "exact", 1.0
        if self.embeddings is not None and self.embed is not None and len(self.embeddings):
            x = np.asarray(self.embed(text), dtype=np.float32)
            sims = self.embeddings @ x
            j = int(np.argmax(sims))
            if float(sims[j]) >= self.min_similarity:
                return j, "nearest", float(sims[j])
        return None, "canned", None


def encode_prompts(encoder: Any, prompts: list[str]) -> np.ndarray:
    """Dataset prompt embeddings through a *cached* copy of ``encoder`` (fast on re-runs)."""
    try:
        from router.proxy.routing import load_encoder

        cached = load_encoder(encoder.config())
    except Exception:  # not our Encoder type: use it as it is
        cached = encoder
    return np.asarray(cached.encode(prompts, progress=True), dtype=np.float32)


class ReplayBackend(Backend):
    kind = "replay"

    def __init__(self, entry: ModelEntry, timeout: float, provider: ReplayProvider) -> None:
        super().__init__(entry, timeout, price=(0.0, 0.0, "replay"))
        self.provider = provider
        self.model = entry.litellm_params.upstream_model
        self.j = provider.model_index(self.model)

    def max_cost(self, prompt_tokens: int, max_output_tokens: int) -> float:
        return float(self.provider.max_cost[self.j])

    def _answer(self, payload: dict[str, Any]) -> tuple[str, float, dict[str, Any]]:
        text = routing_text(payload.get("messages") or [])
        row, match, sim = self.provider.lookup(text)
        ds = self.provider.ds
        info: dict[str, Any] = {"match": match, "similarity": None if sim is None else round(
            sim, 4), "dataset": ds.name}
        extra: dict[str, Any] = {"replay": info}
        if row is None:
            answer = CANNED.format(model=self.model)
            cost = float(np.nanmean(ds.cost[:, self.j])) if np.isfinite(
                ds.cost[:, self.j]).any() else 0.0
            return answer, cost, extra
        info["dataset_id"] = ds.ids[row]
        recorded = ds.responses[row][self.j] if ds.responses is not None else None
        answer = recorded if isinstance(recorded, str) else (
            f"[replay] {self.model}: no recorded response for dataset prompt {ds.ids[row]}")
        cost = float(self.provider.fill_cost[row, self.j])
        grade = ds.quality[row, self.j]
        if np.isfinite(grade):
            info["grade"] = float(grade)
            extra["grade"] = float(grade)
        return answer, cost, extra

    async def _wait(self) -> None:
        if self.provider.latency_ms > 0:
            await asyncio.sleep(self.provider.latency_ms / 1000)

    async def complete(self, payload: dict[str, Any]) -> Completion:
        await self._wait()
        answer, cost, extra = await self._answer_async(payload)
        p = estimate_prompt_tokens(payload.get("messages") or [])
        c = estimate_tokens_chars(len(answer))
        now = int(time.time())
        body = {"id": f"chatcmpl-replay-{os.urandom(6).hex()}", "object": "chat.completion",
                "created": now, "model": self.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}}
        return Completion(body, p, c, cost, extra)

    async def _answer_async(self, payload: dict[str, Any]):
        """Exact matches inline; a nearest-prompt search (an encoder call) in a thread."""
        text = routing_text(payload.get("messages") or [])
        embed = self.provider.embed
        if (prompt_hash(text.strip()) in self.provider.index or embed is None
                or getattr(embed, "fast", False)):
            return self._answer(payload)
        return await asyncio.to_thread(self._answer, payload)

    async def open_stream(self, payload: dict[str, Any]) -> StreamResult:
        await self._wait()
        answer, cost, extra = await self._answer_async(payload)
        p = estimate_prompt_tokens(payload.get("messages") or [])
        cid = f"chatcmpl-replay-{os.urandom(6).hex()}"
        base = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()),
                "model": self.model}
        include_usage = bool((payload.get("stream_options") or {}).get("include_usage"))

        async def gen():
            from router.proxy.wire import jdumps

            size = max(1, len(answer) // 4 or 1)
            chunks = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant",
                                                                   "content": ""},
                                            "finish_reason": None}]}]
            for i in range(0, len(answer), size):
                chunks.append({**base, "choices": [{"index": 0, "delta": {
                    "content": answer[i : i + size]}, "finish_reason": None}]})
            chunks.append({**base, "choices": [{"index": 0, "delta": {},
                                                "finish_reason": "stop"}]})
            if include_usage:
                c = estimate_tokens_chars(len(answer))
                chunks.append({**base, "choices": [], "usage": {
                    "prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}})
            for ch in chunks:
                yield b"data: " + jdumps(ch) + b"\n\n"
            yield b"data: [DONE]\n\n"

        sr = StreamResult(gen(), SSEMeter(p), self)
        sr.fixed_cost = cost
        sr.extra = extra
        return sr


# ---- the demo -----------------------------------------------------------------------


#: ``router serve --demo``: how long a replayed answer waits for the client's own feedback
DEMO_FEEDBACK_DELAY_S = 60.0


async def grade_later(gw: Any, request_id: str, grade: float, delay: float) -> bool:
    """Send the replay's grade as feedback (source ``replay``) after ``delay`` seconds,
    unless feedback for the request was given meanwhile; True when the grade was sent."""
    from router.proxy.schemas import APIError

    if delay > 0:
        await asyncio.sleep(delay)
    try:
        await gw.feedback(request_id, grade, source="replay")
    except APIError as exc:  # 409: the client's feedback came first; 404: context expired
        log.debug("replay grade for %s not sent: %s", request_id, exc)
        return False
    return True


def default_demo_dataset() -> Path | None:
    base = Path(os.environ.get("COSTROUTE_SHARED", Path.cwd().parent / "shared" / "datasets"))
    path = base / "routerbench-subset"
    return path if path.is_dir() else None


def demo_params(name: str) -> dict[str, Any]:
    """The demo's parameters for policy ``name``: the online replay's tuned bandit
    (``eval.online.DEFAULT_PARAMS``, chosen on RouterBench-subset train replays) for
    linucb, the policy's defaults otherwise."""
    if name != "linucb":
        return {}
    from eval.online import DEFAULT_PARAMS

    return dict(DEFAULT_PARAMS)


def build_demo(state_dir: str | os.PathLike[str], policy_name: str | None = None,
               latency_ms: float = 50.0, dataset: str | None = None, lam: float = 0.0,
               encoder: str = "minilm", encoder_backend: str = "auto",
               feedback_delay_s: float = DEMO_FEEDBACK_DELAY_S) -> dict[str, Any]:
    """Config + policy + replay provider of ``router serve --demo`` (trains if needed).

    ``feedback_delay_s``: how long each replayed answer's grade waits for the client's own
    ``POST /v1/feedback`` (which then counts instead of the grade).

    ``encoder``: ``minilm`` (all-MiniLM-L6-v2, the default) or ``hashing`` (no model,
    instant start, no semantic matching).
    """
    from policies import REGISTRY, load_policy, make_policy
    from router import datasets
    from router.demo_dataset import generate_demo_dataset
    from router.proxy.config import parse_config

    state_dir = Path(state_dir)
    path = dataset or default_demo_dataset()
    if path is not None:
        split = datasets.load_split(str(path))
        source = str(path)
    else:
        split = DatasetSplit(*generate_demo_dataset().split(0.3, 0))
        source = "generated demo dataset"
    train, test = split.train, split.test
    if policy_name is None:
        policy_name = "linucb" if "linucb" in REGISTRY and _importable(REGISTRY["linucb"]) \
            else "knn"
    if encoder == "hashing":
        from router.proxy.routing import hashing_encoder_config, load_encoder

        enc = load_encoder(hashing_encoder_config(256), use_cache=False)
    elif encoder == "minilm":
        from router.encoding.select import default_encoder

        enc = default_encoder()
    else:
        raise ValueError(f"unknown demo encoder {encoder!r} (minilm or hashing)")
    encoder = enc
    X_train = encoder.encode(train.prompts, progress=True)  # fixes encoder.config()["dim"]

    def trained(name: str):
        """The demo's ``name`` policy: the cached artifact if it still fits, else trained."""
        art = state_dir / f"demo-{name}-{enc.backend_name}"
        policy = None
        if (art / "config.json").is_file():
            try:
                policy = load_policy(str(art))
                wanted = demo_params(name)
                if (policy.meta_.get("dataset") != source or policy.models_ != train.models
                        or policy.meta_.get("encoder") != encoder.config()
                        or any(policy.get_params().get(k) != v for k, v in wanted.items())):
                    policy = None
            except Exception as exc:  # stale artifact of an older version: retrain
                log.info("retraining the demo %s policy (%s)", name, exc)
                policy = None
        if policy is None:
            log.info("training the demo %s policy on %s (%d prompts)", name, source,
                     len(train))
            policy = make_policy(name, **demo_params(name))
            policy.fit_dataset(train, X_train)
            policy.save(art, meta={"encoder": encoder.config(), "dataset": source})
            policy = load_policy(str(art))
        return policy

    policy = trained(policy_name)
    # router-cascade: a cascade learned from the train split's recorded responses
    cascade = None
    if policy_name != "cascade" and "cascade" in REGISTRY and train.responses is not None:
        cascade = trained("cascade")
    both = datasets.concat_datasets([train, test], train.name)
    X_all = encoder.encode(both.prompts, progress=True)
    provider = ReplayProvider(both, latency_ms=latency_ms, embeddings=X_all)
    cfg = parse_config({
        "model_list": [{"model_name": m, "litellm_params": {"model": f"replay/{m}"}}
                       for m in train.models],
        "routing": {"lam": lam, "max_fallback_tries": 2},
        "state": {"dir": str(state_dir)},
        "replay": {"dataset": source, "latency_ms": latency_ms,
                   "auto_feedback_delay_seconds": feedback_delay_s},
    }, source="demo")
    from router.proxy.routing import load_encoder

    serving_encoder = load_encoder(encoder.config(), encoder_backend, policy.dim_,
                                   use_cache=False)
    policies = {policy.name: (policy, serving_encoder)}
    if cascade is not None:
        policies["cascade"] = (cascade, serving_encoder)
    return {"config": cfg, "policies": policies,
            "default_policy": policy.name, "replay": provider, "source": source,
            "test": test}


def _importable(spec: str) -> bool:
    import importlib.util

    module = spec.split(":")[0]
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False
