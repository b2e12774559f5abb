"""Answer kinds, answer extraction and agreement (policies/answers.py)."""

from __future__ import annotations

import pytest

from policies import answers as A

ARC_LIKE = (
    "Which gas do plants take in?\nA) oxygen\nB) carbon dioxide\nC) helium\nD) neon\n"
    'Print only a single choice  from "A" or "B" or "C" or "D" without explanation.\n'
    "Answer:\nB\n\n"
    "What is the boiling point of water at sea level?\nA) 50 C\nB) 100 C\nC) 150 C\n"
    "D) 200 C\nAnswer:\n"
)


@pytest.mark.parametrize("prompt, kind", [
    (ARC_LIKE, "mc"),
    ("Write a function to find the intersection of two arrays.", "code"),
    ("def add(a, b):\n    \"\"\"Return the sum of a and b.\"\"\"\n", "code"),
    ("Is Paris the capital of France? Answer yes or no.", "yesno"),
    ("Tom has 3 apples and buys 4 more. How many apples does he have?", "number"),
    ("Tell me a story about a dragon.", "text"),
])
def test_infer_kind_from_text_alone(prompt: str, kind: str) -> None:
    assert A.infer_kind(prompt) == kind


WINOGRANDE_LIKE = ("Sarah was a much better surgeon than Maria so _ always got the harder cases.\n"
                   "Option 1: Sarah\nOption 2: Maria\nAnswer:")


def test_numbered_options_are_multiple_choice() -> None:
    assert A.infer_kind(WINOGRANDE_LIKE) == "mc"
    assert A.infer_kind("1) red\n2) blue\nWhich colour is the sky?") == "mc"
    # a numbered list in an arithmetic question stays a number question
    assert A.infer_kind("How many fruits?\n1. three apples\n2. two pears") == "number"


@pytest.mark.parametrize("response, key", [
    ("Option 1", "1"), ("2", "2"), ("2: Maria", "2"), ("The answer is option 2.", "2"),
    ("(1) Sarah", "1"), ("Sarah", None), ("1.5 times more", None), ("B", "B"),
])
def test_extract_option_number(response: str, key: str | None) -> None:
    assert A.extract(response, "mc") == key
    if key is not None:  # the same option stated another way agrees
        other = A.extract(f"Option {key}" if key.isdigit() else f"The answer is {key}.", "mc")
        assert A.agree(A.extract(response, "mc"), other, "mc")


def test_word_problems_asking_for_a_quantity_are_number_questions() -> None:
    q = ("Haley grows at the rate of 3 inches every year. If she is currently 20 inches "
         "tall, what will be her height after 10 years?")
    assert A.infer_kind(q) == "number"
    # one number, or a question that asks for no quantity, stays text
    assert A.infer_kind("Haley is 20 inches tall. What colour is her hair?") == "text"
    assert A.infer_kind("What will be her height after 10 years?") == "text"


def test_few_shot_examples_of_another_kind_do_not_decide() -> None:
    prompt = ("How many legs has a cat?\nAnswer: 4\n\n"
              "Which is a mammal?\nA) shark\nB) whale\nC) trout\nAnswer:\n")
    assert A.infer_kind(prompt) == "mc"


@pytest.mark.parametrize("response, key", [
    ("B", "B"), ("C\n", "C"), (" (D) because it is", "D"), ("b) carbon dioxide", None),
    ("The answer is C.", "C"), ("Answer: A", "A"), ("**B**", "B"),
    ("Unfortunately I", None), ("Okay,", None), ("", None),
    # the words "I" and "A" are not options; a stated answer after them is
    ("I think the correct option is C because", "C"), ("I do", None),
    ("A and B are wrong; the answer is C", "C"), ("A good choice is B", "B"),
    ("A is correct.", "A"), ("A. Paris", "A"), ("A", "A"), ("I) none of these", "I"),
    ("Answer: b", "B"), ("Answer: (d)", "D"), ("the answer is a bit unclear", None),
])
def test_extract_letter(response: str, key: str | None) -> None:
    assert A.extract(response, "mc") == key


@pytest.mark.parametrize("response, key", [
    ("So he has 7 apples.\n#### 7", "7"), ("The answer is 1,000.50 dollars", "1000.5"),
    ("3/4 of them", "0.75"), ("x = 12", "12"), ("no numbers here", None),
    ("first 3 then 5, finally 8", "8"),
])
def test_extract_number(response: str, key: str | None) -> None:
    assert A.extract(response, "number") == key


def test_extract_yesno() -> None:
    assert A.extract("Yes, it is.", "yesno") == "yes"
    assert A.extract("No.", "yesno") == "no"
    assert A.extract("Let me think. So the answer is no", "yesno") == "no"
    assert A.extract("Perhaps.", "yesno") is None


def test_code_agreement_ignores_layout_comments_and_prose() -> None:
    a = ("Here is the function:\n\n```python\ndef add(a, b):\n    # sum\n    return a + b\n"
         "```\nIt adds.")
    b = "Sure!\n```\ndef add(a,b):\n\n    return a+b   # done\nprint(add(1, 2))\n```"
    c = " \n[PYTHON]\ndef add(a, b):\n    return b + a\n[/PYTHON]\n[TESTS]\nassert add(1,2)==3"
    ka, kb, kc = (A.extract(x, "code") for x in (a, b, c))
    assert ka == kb and A.agree(ka, kb)
    assert kc is not None and not A.agree(ka, kc)
    assert A.function_signature(A.extract_code(a)) == "add/2"


def test_free_text_normalised() -> None:
    assert A.extract("Paris!", "text") == A.extract("  paris ", "text") == "paris"


def test_none_never_agrees_and_groups_order() -> None:
    assert not A.agree(None, None)
    keys = {"m1": "A", "m2": None, "m3": "B", "m4": "B", "m5": "A"}
    assert A.groups(keys) == [("m1", "m5"), ("m3", "m4")]
    assert A.key_codes([["A", None, "A", "B"]]) == [[0, -2, 0, 1]]


def test_unknown_kind_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown answer kind"):
        A.extract("B", "essay")
