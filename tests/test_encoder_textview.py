"""Text views: parsing, errors, few-shot question extraction (synthetic and real prompts)."""

from __future__ import annotations

import ast

import pytest

from router.textview import (
    DEFAULT_FALLBACK_CHARS,
    DEFAULT_VIEW,
    TextView,
    TextViewError,
    apply,
    final_question,
    parse_view,
)
from tests.conftest import ROUTERBENCH, needs_shared

SUFFIX = 'Print only a single choice from "A" or "B".\nAnswer:'


def few_shot(question: str, shots: int = 3) -> str:
    parts = [f"Shot question {i}?\nA) yes\nB) no\n{SUFFIX}\nA\n\n" for i in range(shots)]
    return "".join(parts) + f"{question}\nA) yes\nB) no\n{SUFFIX}"


@pytest.mark.parametrize(
    ("spec", "kind", "n", "canonical"),
    [
        ("full", "full", None, "full"),
        ("head:10", "head", 10, "head:10"),
        ("tail:1500", "tail", 1500, "tail:1500"),
        (" TAIL : 7 ", "tail", 7, "tail:7"),
        ("question", "question", DEFAULT_FALLBACK_CHARS, "question"),
        ("question:300", "question", 300, "question:300"),
    ],
)
def test_parse_view(spec, kind, n, canonical):
    view = parse_view(spec)
    assert (view.kind, view.n, view.spec) == (kind, n, canonical)
    assert parse_view(view.spec) == view  # canonical form round-trips
    assert parse_view(view) is view


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("middle:5", "unknown text view"),
        ("tail", "needs a length"),
        ("head:", "positive integer"),
        ("tail:abc", "positive integer"),
        ("tail:0", "positive integer"),
        ("tail:-3", "positive integer"),
        ("full:10", "takes no length"),
        (15, "must be a string"),
    ],
)
def test_parse_view_errors(spec, message):
    with pytest.raises(TextViewError, match=message):
        parse_view(spec)


def test_head_tail_full():
    text = "abcdefghij"
    assert apply("full", text) == text
    assert apply("head:3", text) == "abc"
    assert apply("tail:3", text) == "hij"
    assert apply("tail:50", text) == text
    with pytest.raises(TypeError):
        apply("full", None)


def test_question_extracts_final_question():
    prompt = few_shot("Which gas do plants absorb?")
    assert apply("question", prompt) == f"Which gas do plants absorb?\nA) yes\nB) no\n{SUFFIX}"
    # two prompts sharing the prefix differ only in their question under the view
    other = few_shot("How many legs has a spider?")
    assert apply("question", prompt) != apply("question", other)
    assert apply("head:100", prompt) == apply("head:100", other)


@pytest.mark.parametrize(
    "prompt",
    [
        "Q: 2+2?\nA: 4\n\nQ: 3+3?\nA: 6\n\nQ: 5+5?\nA:",
        "Question: 2+2?\nAnswer: 4\n\nQuestion: 5+5?\nAnswer:",
        "Question: 2+2?\nanswer:\n4\n\nQuestion: 5+5?\nAnswer:",
    ],
)
def test_question_other_formats(prompt):
    assert "5+5" in apply("question", prompt)
    assert "2+2" not in apply("question", prompt)


def test_question_falls_back_to_tail():
    plain = "Write a function to reverse a list.\n\nIt should not copy.\n" * 40
    assert final_question(plain) is None
    assert apply("question:100", plain) == plain[-100:]
    assert apply("question", "short prompt") == "short prompt"
    # an unanswered trailing marker is not an exemplar
    assert final_question("Explain X.\nAnswer:") is None


def test_default_view_is_question():
    assert parse_view(DEFAULT_VIEW) == TextView("question", DEFAULT_FALLBACK_CHARS)


def _prompts(name: str) -> list[str]:
    import pandas as pd

    df = pd.read_csv(ROUTERBENCH / name)
    return [ast.literal_eval(p)[0] for p in df["prompt"]]


@needs_shared
def test_real_arc_prompts_yield_their_question():
    prompts = _prompts("arc_challenge_test.csv")
    questions = [final_question(p) for p in prompts]
    assert all(q is not None for q in questions)
    for p, q in zip(prompts, questions, strict=True):
        assert p.endswith(q)
        assert q.count("Answer:") == 1 and q.rstrip().endswith("Answer:")
        assert len(q) < 0.7 * len(p)  # the shared 5-shot prefix is gone
    # the 5-shot prefix is shared: the heads collide, the questions do not
    assert len({p[:1000] for p in prompts}) < 0.1 * len(prompts)
    assert len(set(questions)) > 0.95 * len(prompts)


@needs_shared
def test_real_mbpp_prompts_fall_back_to_whole_prompt():
    prompts = _prompts("mbpp_test.csv")
    assert all(final_question(p) is None for p in prompts)
    assert all(apply("question", p) == p for p in prompts if len(p) <= DEFAULT_FALLBACK_CHARS)
