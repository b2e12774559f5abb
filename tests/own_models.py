"""Three scripted "own" models and a judge, served by the test upstream (tests/upstream.py).

``small`` / ``medium`` / ``large`` answer arithmetic questions of levels 0-2 right up to
their skill (and on every third question one level above it), at rising prices; the
``judge`` grades an answer against a reference. Tests of labelling (``router label``),
calibration and training from logs use them as the user's own models.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.upstream import UpstreamServer, backend_entry

#: model -> (USD per input token, USD per output token)
OWN_MODELS = {"small": (1e-7, 2e-7), "medium": (1e-6, 3e-6), "large": (1e-5, 3e-5)}
#: the largest question level each model answers correctly (levels 0, 1, 2)
OWN_SKILL = {"small": 0, "medium": 1, "large": 2}
OWN_TEMPLATES = (
    "Quick sum {i}: what is {a} + {b}?",
    "Two step arithmetic problem {i}: compute {a} * {b} + {c} and give the number.",
    "Hard multi step word problem {i}: a shop sells {a} boxes of {b} pens each and then "
    "buys {c} more pens; after giving away half of all the pens, how many pens are left?",
)


def own_question(i: int, level: int) -> tuple[str, int]:
    """A question of difficulty ``level`` (0-2) and its true integer answer."""
    a, b, c = 3 + i % 17, 4 + i % 13, 2 * (5 + i % 11)
    answer = (a + b, a * b + c, (a * b + c) // 2)[level]
    return OWN_TEMPLATES[level].format(i=i, a=a, b=b, c=c), answer


def own_prompts(n: int, start: int = 0) -> list[dict[str, Any]]:
    """``n`` prompt-file records (id, prompt, answer), levels cycling 0, 1, 2."""
    out = []
    for i in range(start, start + n):
        text, answer = own_question(i, i % 3)
        out.append({"id": f"q{i}", "prompt": text, "answer": str(answer)})
    return out


def _own_level(text: str) -> int:
    for level, tpl in enumerate(OWN_TEMPLATES):
        if text.startswith(tpl.split("{", 1)[0]):
            return level
    return 0


def own_answer(model: str, text: str) -> str:
    """Scripted answer of ``model``: right up to its skill level, right on every third
    question one level above it (a seeded coin), off by one otherwise; larger models write
    longer answers, of a length that varies by question (so calls cost what they say)."""
    import hashlib
    import re

    level = _own_level(text)
    head = re.search(r"(\d+):", text)
    m = re.search(r"(\d+)\D+(\d+)(?:\D+(\d+))?", text.split(":", 1)[-1])
    if head is None or m is None:  # not one of the scripted questions
        return "I do not know."
    i = int(head.group(1))
    a, b = int(m.group(1)), int(m.group(2))
    c = int(m.group(3) or 0)
    truth = (a + b, a * b + c, (a * b + c) // 2)[level]
    coin = hashlib.blake2b(f"{model}/{i}".encode(), digest_size=2).digest()[0] % 3 == 0
    right = level <= OWN_SKILL[model] or (level == OWN_SKILL[model] + 1 and coin)
    got = truth if right else truth + 1
    pad = {"small": "", "medium": "Working it out carefully. ",
           "large": "Let me reason about this step by step, checking each part. "}[model]
    return f"{pad * (1 + (7 * i) % 4)}The answer is {got}."


def own_judge(text: str) -> str:
    """A judge: SCORE 1 when the assistant's final number equals the reference's."""
    import re

    ref = re.search(r"Reference answer:\n(.*?)\n\n", text, re.DOTALL)
    ans = re.search(r"Assistant answer:\n(.*?)\n\nGrade", text, re.DOTALL)
    if ref is None or ans is None:
        return "I cannot tell."
    nums = re.findall(r"-?\d+", ans.group(1))
    ok = bool(nums) and nums[-1] == ref.group(1).strip()
    return f"SCORE: {1 if ok else 0}"


def play_own_models(server: UpstreamServer, judge: str = "judge") -> None:
    """Script ``small``/``medium``/``large`` (see :func:`own_answer`) and a ``judge``."""
    for model in OWN_MODELS:
        server.script(model, lambda text, m=model: own_answer(m, text))
    server.script(judge, own_judge)


def own_config(base: str, state_dir: str | Path, judge: str = "judge",
               **routing: Any) -> dict[str, Any]:
    """A gateway config (a dict, to dump as YAML) of the three models and the judge."""
    models = [backend_entry(m, base, p_in, p_out) for m, (p_in, p_out) in OWN_MODELS.items()]
    models.append(backend_entry(judge, base, 5e-6, 1e-5))
    return {"model_list": models, "routing": {"fallback": list(OWN_MODELS), **routing},
            "state": {"dir": str(state_dir)}}
