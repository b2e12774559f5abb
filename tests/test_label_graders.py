"""Graders of `router data label`: strict judge verdicts, exact / mc / number answers."""

from __future__ import annotations

import pytest

from router.graders import (
    GraderError,
    check_reference,
    grade_reference,
    judge_messages,
    parse_grader,
    parse_verdict,
)


@pytest.mark.parametrize(("text", "score"), [
    ("SCORE: 1", 1.0), ("SCORE: 0", 0.0), ("  score: 0.75\n", 0.75), ("SCORE:.5", 0.5),
    ("SCORE: 1.0", 1.0),
    ("SCORE: 1.5", None), ("SCORE: -0.1", None), ("The answer is right. SCORE: 1", None),
    ("SCORE: 1 (fully correct)", None), ("9/10", None), ("", None), (None, None),
    ("SCORE: 0.8\nSCORE: 0.2", None),
])
def test_verdicts_parse_strictly(text, score):
    assert parse_verdict(text) == score


def test_reference_graders():
    assert grade_reference("exact", "  Paris. ", "paris") == 1.0
    assert grade_reference("exact", "Paris, France", "Paris") == 0.0
    assert grade_reference("mc", "The answer is (C).", "C") == 1.0
    assert grade_reference("mc", "B) because ...", "(C)") == 0.0
    assert grade_reference("mc", "I am not sure", "C") == 0.0
    assert grade_reference("number", "so 1,000.50 dollars. #### 1000.5", "1000.5") == 1.0
    assert grade_reference("number", "The answer is 41.", "42") == 0.0
    assert grade_reference("number", "no idea", "42") == 0.0
    assert check_reference("number", None) == "has no reference answer ('answer' field)"
    assert "names no option letter" in check_reference("mc", "seven")
    assert check_reference("judge", None) is None


def test_grader_specs():
    assert str(parse_grader("judge:gpt-4o", ["gpt-4o"])) == "judge:gpt-4o"
    assert parse_grader("number").needs_reference
    with pytest.raises(GraderError, match="name the judge backend"):
        parse_grader("judge:")
    with pytest.raises(GraderError, match="unknown grader"):
        parse_grader("regex")


def test_judge_prompt_carries_request_reference_and_answer():
    msgs = judge_messages("What is 2+2?", "4", "4")
    assert msgs[0]["role"] == "system" and "SCORE: <a number between 0 and 1>" in msgs[0]["content"]
    user = msgs[1]["content"]
    assert "User request:\nWhat is 2+2?" in user and "Reference answer:\n4" in user
    assert "Assistant answer:\n4" in user
    assert "Reference answer" not in judge_messages("q", "a")[1]["content"]
