"""The generated demo dataset: five priced models, four tasks, seeded and offline."""

from __future__ import annotations

import math

import numpy as np

from router.dataset import RoutingDataset
from router.dataset_formats import DatasetError

_CHARS_PER_TOKEN = 4

# (input, output) USD per 1M tokens: a snapshot of list prices (litellm's table, 2025) so the
# demo does not change when the price table does.
DEMO_MODELS: dict[str, tuple[float, float]] = {
    "gpt-4o": (2.5, 10.0),
    "gpt-4o-mini": (0.15, 0.6),
    "claude-haiku-4-5": (1.0, 5.0),
    "llama-3.1-70b-instruct": (0.88, 0.88),
    "llama-3.1-8b-instruct": (0.18, 0.18),
}
DEMO_TASKS = ("arithmetic", "coding", "trivia", "summarise")
# logit of success at difficulty 0, per model (rows, DEMO_MODELS order) and task (columns)
_DEMO_SKILL = np.array([
    [4.2, 4.0, 3.6, 3.4],
    [3.0, 2.4, 2.4, 3.0],
    [2.8, 3.9, 2.6, 3.1],
    [2.4, 2.0, 3.6, 3.2],
    [1.4, 0.6, 1.4, 2.4],
])
_DEMO_VERBOSITY = np.array([1.0, 1.1, 0.9, 1.2, 1.3])
_DEMO_OUT_TOKENS = {"arithmetic": (60, 60), "coding": (140, 180), "trivia": (12, 10),
                    "summarise": (50, 30)}  # (base, per difficulty level)
_DIFFICULTY_SLOPE = 1.8

_COUNTRIES = {"easy": ["France", "Japan", "Italy", "Canada", "Egypt", "Spain", "Germany"],
              "medium": ["Australia", "Turkey", "Nigeria", "Brazil", "Switzerland", "Morocco"],
              "hard": ["Bhutan", "Burkina Faso", "Kyrgyzstan", "Vanuatu", "Eswatini", "Palau"]}
_BOOKS = ["Middlemarch", "The Master and Margarita", "Pedro Paramo", "Things Fall Apart",
          "The Leopard", "Dream of the Red Chamber", "Independent People", "Season of Migration"]
_EVENTS = ["the Treaty of Westphalia", "the Congress of Vienna", "the Peace of Augsburg",
           "the Treaty of Nerchinsk", "the Edict of Nantes", "the Treaty of Tordesillas"]
_CODE_EASY = ["returns the sum of a list of numbers", "reverses a string",
              "counts the vowels in a string", "returns the largest element of a list",
              "checks whether a number is even"]
_CODE_MEDIUM = ["checks whether a string is a palindrome, ignoring case and punctuation",
                "merges two sorted lists into one sorted list",
                "returns the n-th Fibonacci number iteratively",
                "groups a list of words into anagram classes",
                "parses 'key=value' pairs separated by semicolons into a dict"]
_CODE_HARD = ["implements a thread-safe LRU cache with O(1) get/put and a per-entry TTL",
              "solves the N-queens problem and returns every board as a list of strings",
              "computes the edit distance between two strings with an O(min(m, n)) memory DP",
              "parses and evaluates arithmetic expressions with + - * / and parentheses",
              "finds the strongly connected components of a directed graph (Tarjan)"]
_TOPICS = ["the city council", "a research team", "the local library", "a small bakery",
           "the football club", "an online retailer", "the weather service", "a hospital"]
_VERBS = ["announced", "reported", "postponed", "expanded", "reviewed", "introduced", "cancelled"]
_OBJECTS = ["a new budget", "its opening hours", "a recycling scheme", "the annual festival",
            "a staff training plan", "the delivery schedule", "a customer survey"]
_ITEMS = ["apple", "notebook", "ticket", "candle", "coffee", "pencil"]
_NAMES = ["Ana", "Bilal", "Chen", "Dara", "Emeka", "Freya", "Goran", "Hana"]


def generate_demo_dataset(n: int = 600, seed: int = 0, *,
                          missing_rate: float = 0.01) -> RoutingDataset:
    """A synthetic but structured routing dataset, made here (no downloads).

    Four task families of templated prompts (arithmetic, coding, trivia, summarise) at three
    difficulty levels that show in the text (bigger numbers, harder specs, obscure facts,
    longer passages). Five models with realistic list prices (:data:`DEMO_MODELS`) and
    different per-task skills: success ~ Bernoulli(sigmoid(skill[model, task] - 1.8 * level)),
    graded quality for ``summarise``. Per-call cost = price_in * prompt tokens + price_out *
    answer tokens (task- and model-dependent lengths with noise). ``missing_rate`` of the
    quality cells are left missing, as in real data. Deterministic for a given ``seed``.
    """
    if n < 1:
        raise DatasetError(f"demo dataset size must be >= 1, got {n}")
    if not 0 <= missing_rate < 1:
        raise DatasetError(f"missing_rate must be in [0, 1), got {missing_rate}")
    rng = np.random.default_rng(seed)
    models = list(DEMO_MODELS)
    prices = np.array([DEMO_MODELS[m] for m in models])
    task_idx = np.arange(n) % len(DEMO_TASKS)
    rng.shuffle(task_idx)
    levels = rng.integers(0, 3, size=n)
    prompts = [_demo_prompt(DEMO_TASKS[t], int(d), rng) for t, d in zip(task_idx, levels,
                                                                          strict=True)]
    logits = (_DEMO_SKILL[:, task_idx].T - _DIFFICULTY_SLOPE * levels[:, None]
              + rng.normal(0.0, 0.6, size=(n, 1)))  # a per-prompt shared shift
    p = 1.0 / (1.0 + np.exp(-logits))
    quality = (rng.random((n, len(models))) < p).astype(float)
    graded = np.array([DEMO_TASKS[t] == "summarise" for t in task_idx])
    noisy = np.clip(p + rng.normal(0.0, 0.08, size=p.shape), 0.0, 1.0).round(3)
    quality[graded] = noisy[graded]
    in_tok = np.array([math.ceil(len(s) / _CHARS_PER_TOKEN) + 12 for s in prompts], dtype=float)
    base = np.array([_DEMO_OUT_TOKENS[DEMO_TASKS[t]][0] + _DEMO_OUT_TOKENS[DEMO_TASKS[t]][1] * d
                     for t, d in zip(task_idx, levels, strict=True)], dtype=float)
    out_tok = np.maximum(1.0, np.round(base[:, None] * _DEMO_VERBOSITY[None, :]
                                       * rng.lognormal(0.0, 0.25, size=(n, len(models)))))
    cost = (in_tok[:, None] * prices[None, :, 0] + out_tok * prices[None, :, 1]) / 1e6
    if missing_rate > 0:
        quality[rng.random(quality.shape) < missing_rate] = np.nan
    return RoutingDataset(
        name="demo", prompts=prompts, tasks=[DEMO_TASKS[t] for t in task_idx], models=models,
        quality=quality, cost=cost, ids=[f"demo-{i:05d}" for i in range(n)],
    )


def _demo_prompt(task: str, level: int, rng: np.random.Generator) -> str:
    pick = lambda xs: xs[int(rng.integers(len(xs)))]  # noqa: E731
    if task == "arithmetic":
        if level == 0:
            return f"What is {rng.integers(2, 20)} + {rng.integers(2, 20)}?"
        if level == 1:
            name, item = pick(_NAMES), pick(_ITEMS)
            k, price = int(rng.integers(3, 12)), int(rng.integers(2, 9))
            bill = 50 if k * price < 50 else 100
            return (f"{name} buys {k} {item}s at ${price} each and pays with a ${bill} note. "
                    f"How much change does {name} get?")
        a, b, c = rng.integers(2, 9), rng.integers(-40, 40), rng.integers(-60, 5)
        return (f"Solve {a}x^2 + ({b})x + ({c}) = 0 for real x. Give both roots rounded to two "
                f"decimals, then compute {rng.integers(3, 30)}^{rng.integers(5, 12)} mod "
                f"{rng.integers(7, 97)} and explain each step.")
    if task == "coding":
        spec = pick([_CODE_EASY, _CODE_MEDIUM, _CODE_HARD][level])
        lang = pick(["Python", "Python", "Python", "JavaScript", "Go"])
        name = pick(["solve", "compute", "process", "handle", "run"]) + "_" + pick(
            ["items", "data", "values", "input", "records"])
        extra = ["", " Include type hints and a docstring.",
                 " Include type hints, a docstring, complexity analysis and unit tests."]
        return f"Write a {lang} function `{name}` that {spec}.{extra[level]}"
    if task == "trivia":
        country = pick(_COUNTRIES[["easy", "medium", "hard"][level]])
        if level < 2:
            return pick([f"What is the capital of {country}?",
                         f"What currency is used in {country}?",
                         f"What is the official language of {country}?",
                         f"Who wrote the novel '{pick(_BOOKS)}'?" if level else
                         f"On which continent is {country}?"])
        return (f"In which year was {pick(_EVENTS)} signed, and which powers were its main "
                f"signatories? Also name the capital of {country}.")
    sentences = [f"{pick(_TOPICS).capitalize()} {pick(_VERBS)} {pick(_OBJECTS)} on "
                 f"{pick(['Monday', 'Tuesday', 'Friday', 'the weekend'])}."
                 for _ in range(int(rng.integers(2, 4)) + 4 * level)]
    return "Summarise the following text in one sentence:\n" + " ".join(sentences)
