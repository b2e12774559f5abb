"""Train/test pair detection (underscore and dash names) and the seeded, stratified split."""

from __future__ import annotations

import json

import numpy as np
import pytest

from router.datasets import DatasetError, find_pairs, load_split
from tests.test_datasets_loaders import write_routerbench_csv


def _dc(path, n, models=("mistralai/Mistral-7B-v0.1", "meta-llama/Meta-Llama-3-8B")):
    path.write_text(json.dumps([{"question": f"{path.stem} q{i}",
                                 "scores": {m: (i + k) % 2 for k, m in enumerate(models)}}
                                for i in range(n)]))


def test_pairs_with_underscore_names_concatenate_over_tasks(tmp_path):
    write_routerbench_csv(tmp_path / "arc_challenge_train.csv", 5, "arc-challenge")
    write_routerbench_csv(tmp_path / "arc_challenge_test.csv", 2, "arc-challenge")
    write_routerbench_csv(tmp_path / "mbpp_train.csv", 3, "mbpp")
    write_routerbench_csv(tmp_path / "mbpp_test.csv", 4, "mbpp")
    (tmp_path / "README.md").write_text("ignored")
    split = load_split(tmp_path)
    assert len(split.train) == 8 and len(split.test) == 6
    assert split.train.tasks.count("mbpp") == 3 and split.test.tasks.count("mbpp") == 4
    assert split.train.models == split.test.models
    assert split.train.name == tmp_path.name


def test_pairs_with_dash_and_mixed_names(tmp_path):
    _dc(tmp_path / "gsm8k-train.json", 6)
    _dc(tmp_path / "gsm8k-test.json", 3)
    _dc(tmp_path / "mmlu_train.json", 4)
    _dc(tmp_path / "mmlu_test.json", 2)
    pairs = find_pairs(tmp_path)
    assert [(k, tr.name, te.name) for k, tr, te in pairs] == [
        ("gsm8k", "gsm8k-train.json", "gsm8k-test.json"),
        ("mmlu", "mmlu_train.json", "mmlu_test.json"),
    ]
    split = load_split(tmp_path)
    assert sorted(set(split.train.tasks)) == ["gsm8k", "mmlu"]
    assert len(split.train) == 10 and len(split.test) == 5
    assert split.test.prompts[0] == "gsm8k-test q0"


def test_unpaired_file_is_an_error(tmp_path):
    _dc(tmp_path / "gsm8k-train.json", 3)
    _dc(tmp_path / "gsm8k-test.json", 3)
    _dc(tmp_path / "mmlu_train.json", 3)
    with pytest.raises(DatasetError, match=r"without their other half: mmlu_train\.json"):
        load_split(tmp_path)


def test_other_files_next_to_pairs_warn(tmp_path):
    _dc(tmp_path / "x_train.json", 3)
    _dc(tmp_path / "x_test.json", 2)
    _dc(tmp_path / "x_val.json", 2)
    with pytest.warns(UserWarning, match=r"x_val\.json"):
        split = load_split(tmp_path)
    assert len(split.test) == 2


def test_directory_without_pairs_is_split(tmp_path):
    _dc(tmp_path / "alpha.json", 20)
    _dc(tmp_path / "beta.json", 10)
    split = load_split(tmp_path, test_fraction=0.3, seed=1)
    assert len(split.train) + len(split.test) == 30
    assert split.test.tasks.count("alpha") == 6 and split.test.tasks.count("beta") == 3


def test_seeded_split_is_deterministic_and_stratified(tmp_path):
    path = tmp_path / "all.jsonl"
    recs = [{"id": f"r{i}", "prompt": f"p{i}", "task": "ab"[i % 2],
             "scores": {"m": i % 3 / 2}, "costs": {"m": 0.001}} for i in range(40)]
    path.write_text("\n".join(json.dumps(r) for r in recs))
    a = load_split(path, test_fraction=0.25, seed=7)
    b = load_split(path, test_fraction=0.25, seed=7)
    c = load_split(path, test_fraction=0.25, seed=8)
    assert a.test.ids == b.test.ids and a.train.ids == b.train.ids
    assert a.test.ids != c.test.ids
    assert a.test.tasks.count("a") == 5 and a.test.tasks.count("b") == 5
    assert not set(a.train.ids) & set(a.test.ids)
    np.testing.assert_array_equal(a.test.quality, b.test.quality)


def test_demo_path_gives_demo_split():
    split = load_split("demo", test_fraction=0.3, seed=0)
    assert len(split.train) + len(split.test) == 600
    assert split.train.models == split.test.models
