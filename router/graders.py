"""Graders of ``router data label``: turn a model's answer into a quality in [0, 1].

A grader spec is one of

* ``exact``: 1 when the answer equals the prompt's reference answer after normalisation
  (case, surrounding whitespace, quotes and a trailing full stop, inner whitespace runs), else 0;
* ``mc``: 1 when the option letter the answer picks equals the reference's letter;
* ``number``: 1 when the answer's final number equals the reference's number (relative
  tolerance 1e-6);
* ``judge:<backend>``: an LLM-as-judge, the config's ``<backend>`` asked with
  :data:`JUDGE_SYSTEM` / :func:`judge_messages` for a score in [0, 1].

``mc`` and ``number`` read answers with :mod:`policies.answers` (the extraction the
cascade policies use). An answer with no letter / number scores 0 (the model gave no usable
answer). The judge's reply is parsed strictly (:func:`parse_verdict`): it must be exactly
``SCORE: <x>`` with ``x`` a decimal in [0, 1]; anything else is *no* grade (a missing
cell), never 0.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

REFERENCE_GRADERS = ("exact", "mc", "number")
JUDGE_PREFIX = "judge:"

JUDGE_SYSTEM = (
    "You are a strict grader of answers given by an AI assistant. Judge whether the answer "
    "correctly and completely answers the user's request (compare it with the reference "
    "answer when one is given). Reply with exactly one line and nothing else:\n"
    "SCORE: <a number between 0 and 1>\n"
    "where 1 means fully correct and 0 means wrong or no answer."
)
_VERDICT = re.compile(r"SCORE:\s*(0(?:\.\d+)?|1(?:\.0+)?|\.\d+)", re.IGNORECASE)


class GraderError(ValueError):
    """An unknown grader spec, or a prompt its grader cannot grade (no reference)."""


@dataclass(frozen=True)
class GraderSpec:
    kind: str  # exact | mc | number | judge
    backend: str | None = None

    def __str__(self) -> str:
        return f"{JUDGE_PREFIX}{self.backend}" if self.kind == "judge" else self.kind

    @property
    def needs_reference(self) -> bool:
        return self.kind in REFERENCE_GRADERS


def parse_grader(spec: str, backends: list[str] | None = None) -> GraderSpec:
    """``exact`` | ``mc`` | ``number`` | ``judge:<backend>`` (checked against ``backends``)."""
    text = str(spec).strip()
    if text in REFERENCE_GRADERS:
        return GraderSpec(text)
    if text.startswith(JUDGE_PREFIX):
        backend = text[len(JUDGE_PREFIX):].strip()
        if not backend:
            raise GraderError(f"grader {spec!r}: name the judge backend, e.g. judge:gpt-4o")
        if backends is not None and backend not in backends:
            raise GraderError(f"grader {spec!r}: {backend!r} is not a backend of the config; "
                              f"it has {backends}")
        return GraderSpec("judge", backend)
    raise GraderError(f"unknown grader {spec!r}; use exact, mc, number or judge:<backend>")


def normalise_exact(text: str) -> str:
    t = re.sub(r"\s+", " ", str(text)).strip().casefold()
    t = t.strip("\"'`").strip()
    return t[:-1].rstrip() if t.endswith(".") else t


def grade_reference(kind: str, response: str, reference: str) -> float:
    """Score of ``response`` against ``reference`` for a reference grader (0 or 1)."""
    if kind == "exact":
        return float(normalise_exact(response) == normalise_exact(reference))
    from policies.answers import extract  # one extraction for graders and cascades

    if kind == "mc":
        want = extract(reference, "mc")
        if want is None:
            raise GraderError(f"reference {reference!r} names no option letter or number")
        return float(extract(response, "mc") == want)
    if kind == "number":
        want = extract(reference, "number")
        if want is None:
            raise GraderError(f"reference {reference!r} holds no number")
        got = extract(response, "number")
        if got is None:
            return 0.0
        return float(math.isclose(float(got), float(want), rel_tol=1e-6, abs_tol=1e-12))
    raise GraderError(f"{kind!r} is not a reference grader")


def check_reference(kind: str, reference: str | None) -> str | None:
    """Why a prompt cannot be graded by ``kind`` (None when it can)."""
    if kind not in REFERENCE_GRADERS:
        return None
    if reference is None or not reference.strip():
        return "has no reference answer ('answer' field)"
    try:
        grade_reference(kind, "", reference)
    except GraderError as exc:
        return str(exc)
    return None


def judge_messages(prompt: str, response: str, reference: str | None = None
                   ) -> list[dict[str, Any]]:
    """The chat messages sent to the judge backend for one answer."""
    parts = [f"User request:\n{prompt}"]
    if reference:
        parts.append(f"Reference answer:\n{reference}")
    parts.append(f"Assistant answer:\n{response}")
    parts.append("Grade the assistant answer. Reply with exactly: SCORE: <0 to 1>")
    return [{"role": "system", "content": JUDGE_SYSTEM},
            {"role": "user", "content": "\n\n".join(parts)}]


def parse_verdict(text: str | None) -> float | None:
    """The judge's score, or None unless the reply is exactly ``SCORE: <x in [0, 1]>``."""
    if not isinstance(text, str):
        return None
    m = _VERDICT.fullmatch(text.strip())
    if m is None:
        return None
    value = float(m.group(1))
    return value if 0.0 <= value <= 1.0 else None
