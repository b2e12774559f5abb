"""Answers of model responses: the answer kind of a prompt, the answer a response gives,
and whether answers agree.

A prompt's *kind* says what an answer looks like, inferred from the prompt text alone
(:func:`infer_kind`): ``"mc"`` (a multiple-choice option letter), ``"number"`` (a final
number), ``"yesno"``, ``"code"`` (a program) or ``"text"`` (anything else).
:func:`extract` turns a response into a canonical answer *key* of that kind (None when the
response gives no answer of that kind); two answers agree when their keys are equal
(:func:`agree`, :func:`groups`). Keys are strings, so agreement is one dict lookup and
the offline search can code them as integers (:func:`key_codes`).

Code and free text agree only when their normalised forms are equal (comments, blank
lines, quoting and case removed; for code, identifiers of the defined function kept), which
is rare between different models: for those kinds agreement says little, and a cascade
learns that from the train split (its plans then escalate or skip agreement altogether).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping, Sequence
from functools import lru_cache

KINDS: tuple[str, ...] = ("mc", "number", "yesno", "code", "text")

# ---- kind of a prompt ------------------------------------------------------------------
_OPTION_LINE = re.compile(r"^\s*\(?([A-Ja-j])[\)\.:]\s+\S", re.MULTILINE)
#: numbered options ("Option 1: ...", "1) ...", "(2) ..."): Winogrande-style prompts
_NUMBERED_OPTION_LINE = re.compile(r"^\s*(?:option\s*)?\(?([1-9])[\)\.:]\s+\S",
                                   re.MULTILINE | re.IGNORECASE)
_MC_INSTRUCTION = re.compile(
    r"\b(single choice|choose|select|which of the following|options?|answer with the letter"
    r"|correct (?:option|letter|answer))\b", re.IGNORECASE)
_CODE_PROMPT = re.compile(
    r"\b(write (?:a |an )?(?:python )?(?:function|program|class|script|method)|python|"
    r"def \w+\(|implement (?:a |the )?function|code snippet|return the function)\b",
    re.IGNORECASE)
_YESNO_PROMPT = re.compile(
    r"\b(yes or no|yes/no|answer (?:with )?(?:yes|no)|true or false)\b", re.IGNORECASE)
_NUMBER_PROMPT = re.compile(
    r"\b(how (?:many|much|far|long|old)|what is the (?:value|sum|product|total|number)|"
    r"calculate|compute|solve for|final answer|in dollars|percent(?:age)?)\b",
    re.IGNORECASE)

#: a word problem's closing question asking for a quantity ("What was the final weight of
#: the box, in pounds?"); with at least two numbers in the question it is a number question
_QUANTITY_QUESTION = re.compile(
    r"\b(?:what|how)\b[^?]*\b(?:average|total|number|weight|height|cost|price|time|age|"
    r"speed|distance|amount|area|volume|length|width|difference|sum|profit|"
    r"percent(?:age)?|many|much|long|far|old|minutes?|hours?|days?|weeks?|years?|dollars?|"
    r"cents?|pounds?|miles?|inches|feet|meters?|kilometers?|grams?|kilograms?|liters?)\b"
    r"[^?]*\?\s*$", re.IGNORECASE)
_QUANTITY = re.compile(r"\d+(?:\.\d+)?")


def infer_kind(prompt: str) -> str:
    """The answer kind of ``prompt`` from its text alone (see the module docstring).

    Few-shot prompts are judged by their last question (the text after the last blank
    line that precedes option lines), so examples of another kind do not decide it.
    """
    text = str(prompt)
    tail = _last_question(text)
    options = {m.upper() for m in _OPTION_LINE.findall(tail)}
    if len(options) >= 2 and ({"A", "B"} <= options):
        return "mc"
    numbered = set(_NUMBERED_OPTION_LINE.findall(tail))
    if {"1", "2"} <= numbered and not _NUMBER_PROMPT.search(tail):
        return "mc"
    if _CODE_PROMPT.search(tail) or "```python" in tail:
        return "code"
    if _YESNO_PROMPT.search(tail):
        return "yesno"
    if _NUMBER_PROMPT.search(tail) or re.search(r"\d+\s*[-+*/x]\s*\d+\s*=?\s*\??\s*$", tail):
        return "number"
    if len(_QUANTITY.findall(tail)) >= 2 and _QUANTITY_QUESTION.search(tail.strip()):
        return "number"
    return "text"


def _last_question(text: str) -> str:
    """The last question of a (few-shot) prompt: after the last 'Answer: X' example."""
    parts = re.split(r"\n\s*answer:\s*[^\n]{1,40}\n\s*\n", text, flags=re.IGNORECASE)
    return parts[-1] if parts else text


# ---- answer keys -----------------------------------------------------------------------
_LETTER_PATTERNS = (
    # "B", "(B)", "B) text", "**B**"; not the words "I" and "A" ("I think ...", "A and B")
    re.compile(r"^\W*(?!(?:I|A)\s+[a-z])\(?([A-J])\)?(?:[\s\.\):,*]|$)"),
    # "the answer is C", "Answer: (b)", "correct option is **D**"
    re.compile(r"\b(?i:answer|choice|option)\s*(?i:is)?\s*:?\s*\(?\**"
               r"([A-J]\b|[a-j](?=[\)\.]|\s*$))"),
    # "A is correct", "I is the best answer" (a leading letter stated as the answer)
    re.compile(r"^\W*\(?([A-J])\)?\s+is\s+(?:the\s+)?(?:correct|right|best|answer)\b"),
    re.compile(r"^\s*\**\(?([A-J])\)", re.MULTILINE),
)
#: a numbered option stated as the answer: "Option 2", "2", "(1) ...", "the answer is option 1"
_OPTION_NUMBER_PATTERNS = (
    re.compile(r"^\W*(?i:option\s*)?\(?([1-9])\)?(?:[\s\):,*]|\.(?!\d)|$)"),
    re.compile(r"\b(?i:answer|choice)\s*(?i:is)?\s*:?\s*(?i:option)?\s*\(?\**([1-9])\b(?!\.\d)"),
    re.compile(r"\b(?i:option)\s*\(?([1-9])\b(?!\.\d)"),
)
_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?(?:/\d+)?")
_FINAL_NUMBER = re.compile(
    r"(?:####|answer(?: is)?:?|=|\\boxed\{)\s*\$?\s*(-?\d[\d,]*(?:\.\d+)?(?:/\d+)?)",
    re.IGNORECASE)
_YES = re.compile(r"^\W*(yes|true|correct)\b", re.IGNORECASE)
_NO = re.compile(r"^\W*(no|false|incorrect)\b", re.IGNORECASE)
_CODE_BLOCK = re.compile(r"```[ \t]*(?:python|py|Python)?[ \t]*\r?\n(.*?)(?:```|$)", re.DOTALL)
_TAG_BLOCK = re.compile(r"\[PYTHON\](.*?)(?:\[/PYTHON\]|$)", re.DOTALL)


def extract(response: str | None, kind: str) -> str | None:
    """Canonical answer key of ``response`` for answer ``kind`` (None: no such answer)."""
    if response is None:
        return None
    if kind not in KINDS:
        raise ValueError(f"unknown answer kind {kind!r}; kinds: {', '.join(KINDS)}")
    return _extract(str(response), kind)


@lru_cache(maxsize=200_000)
def _extract(text: str, kind: str) -> str | None:
    if not text.strip():
        return None
    if kind == "mc":
        return extract_letter(text)
    if kind == "number":
        return extract_number(text)
    if kind == "yesno":
        return extract_yesno(text)
    if kind == "code":
        return normalise_code(extract_code(text))
    return normalise_text(text)


def extract_letter(text: str) -> str | None:
    """The option a multiple-choice response picks (first clear statement): a letter, else
    an option number ("Option 2" -> "2") for numbered options."""
    stripped = text.strip()
    for pattern in _LETTER_PATTERNS:
        m = pattern.search(stripped)
        if m:
            return m.group(1).upper()
    for pattern in _OPTION_NUMBER_PATTERNS:
        m = pattern.search(stripped)
        if m:
            return m.group(1)
    return None


def extract_number(text: str) -> str | None:
    """The final number of a response ('#### 42', 'answer is 42', else the last number),
    as a canonical decimal string ('1,000.50' -> '1000.5', '3/4' -> '0.75')."""
    found = _FINAL_NUMBER.findall(text)
    raw = found[-1] if found else None
    if raw is None:
        numbers = _NUMBER.findall(text)
        raw = numbers[-1] if numbers else None
    if raw is None:
        return None
    raw = raw.replace(",", "").replace("$", "")
    try:
        if "/" in raw:
            num, den = raw.split("/", 1)
            value = float(num) / float(den)
        else:
            value = float(raw)
    except (ValueError, ZeroDivisionError):
        return None
    return f"{value:.6g}"


def extract_yesno(text: str) -> str | None:
    """'yes' or 'no' from a response that starts with (or states) one of them."""
    if _YES.search(text):
        return "yes"
    if _NO.search(text):
        return "no"
    m = re.search(r"\b(?:answer|so)(?: is)?:?\s*\**(yes|no)\b", text, re.IGNORECASE)
    return m.group(1).lower() if m else None


def extract_code(text: str) -> str:
    """The program in a response: its fenced or [PYTHON] blocks, else the text itself."""
    blocks = _CODE_BLOCK.findall(text) or _TAG_BLOCK.findall(text)
    return "\n".join(blocks) if blocks else text


_CODE_TOKEN = re.compile(
    r"""[rbuf]{0,2}(?:\"\"\"[\s\S]*?\"\"\"|'\'\'[\s\S]*?'\'\'|"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*')"""
    r"|#[^\n]*|\n|[A-Za-z_]\w*|\d+(?:\.\d+)?|\S", re.IGNORECASE)
_SKIP_LINE = frozenset({"print", "assert", "import", "from"})


def normalise_code(code: str) -> str | None:
    """Code without comments, docstrings, blank lines, print/assert/import lines and with
    one spacing: equal strings mean the same program text up to layout. A regular
    expression tokeniser (strings, comments, names, numbers, symbols), fast and tolerant of
    the truncated code responses often hold."""
    lines: list[list[str]] = [[]]
    for tok in _CODE_TOKEN.findall(code):
        if tok == "\n":
            lines.append([])
        elif not tok.startswith("#"):
            lines[-1].append(tok)
    kept = [" ".join(parts) for parts in lines
            if parts and parts[0] not in _SKIP_LINE
            and not (len(parts) == 1 and parts[0].lstrip("rbufRBUF")[:3] in ('"""', "'''"))]
    out = "\n".join(kept).strip()
    return out or None


def function_signature(code: str) -> str | None:
    """'name/arity' of the first function a program defines (None: none parses)."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        m = re.search(r"def\s+(\w+)\s*\(([^)]*)\)", code)
        if not m:
            return None
        args = [a for a in m.group(2).split(",") if a.strip()]
        return f"{m.group(1)}/{len(args)}"
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            return f"{node.name}/{len(node.args.args)}"
    return None


def normalise_text(text: str) -> str:
    """Lower case, punctuation and markdown removed, whitespace collapsed."""
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", " ", text.lower())).strip()


# ---- agreement -------------------------------------------------------------------------
#: kinds whose answers may agree without being equal (similarity below 1)
GRADED_KINDS = frozenset({"code", "text"})
_TOKEN = re.compile(r"[A-Za-z_]\w*|\d+|[^\w\s]")


def agree(a: str | None, b: str | None, kind: str = "mc", threshold: float = 1.0) -> bool:
    """Two answer keys agree when both exist and their :func:`similarity` reaches
    ``threshold`` (1.0: equal keys; None never agrees)."""
    return a is not None and b is not None and similarity(a, b, kind) >= threshold


def similarity(a: str | None, b: str | None, kind: str) -> float:
    """1.0 for equal keys; for code and free text the Jaccard overlap of their token sets,
    capped just below 1 for different keys (so threshold 1.0 means equality); else 0."""
    if a is None or b is None:
        return 0.0
    if a == b:
        return 1.0
    if kind not in GRADED_KINDS:
        return 0.0
    ta, tb = _tokens(a), _tokens(b)
    union = len(ta | tb)
    return min(len(ta & tb) / union, 0.999) if union else 0.0


@lru_cache(maxsize=100_000)
def _tokens(key: str) -> frozenset[str]:
    return frozenset(_TOKEN.findall(key))


def groups(keys: Mapping[str, str | None]) -> list[tuple[str, ...]]:
    """Models grouped by equal answer key, largest group first (ties: the group whose
    first model comes first in ``keys``' order); models without a key are left out."""
    by_key: dict[str, list[str]] = {}
    for model, key in keys.items():
        if key is not None:
            by_key.setdefault(key, []).append(model)
    order = list(keys)
    found = sorted(by_key.values(), key=lambda g: (-len(g), order.index(g[0])))
    return [tuple(g) for g in found]


def key_codes(keys: Sequence[Sequence[str | None]]) -> list[list[int]]:
    """Integer codes of answer keys per row: equal keys within a row get equal codes,
    a missing key gets -1 - column (never equal to another cell)."""
    out: list[list[int]] = []
    for row in keys:
        seen: dict[str, int] = {}
        out.append([-1 - j if k is None else seen.setdefault(k, len(seen))
                    for j, k in enumerate(row)])
    return out
