"""Loaders on small synthetic files: RouterBench CSV and pickle, RouterDC JSON, generic JSONL."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest

from router.catalogue import ModelCatalogue
from router.dataset_formats import detect_format, task_from_filename
from router.datasets import DatasetError, concat_datasets, load_dataset, save_jsonl

MODELS = ["m-big", "m-small"]


def routerbench_frame(n: int = 4, task: str = "arc-challenge") -> pd.DataFrame:
    """A RouterBench-shaped frame: n prompts, two models, one empty quality cell."""
    rows = []
    for i in range(n):
        rows.append({
            "sample_id": f"{task}.{i}",
            "prompt": repr([f"Question {i}?", "Answer:"]) if i == 0 else repr([f"Question {i}?"]),
            "eval_name": task,
            "m-big": 1.0,
            "m-small": "" if i == 1 else float(i % 2),
            "m-big|model_response": repr([f"big says {i}"]),
            "m-small|model_response": repr([f"small says {i}"]),
            "m-big|total_cost": 0.01 + i * 0.001,
            "m-small|total_cost": 0.0001 * (i + 1),
            "oracle_model_to_route_to": "m-small",
        })
    return pd.DataFrame(rows)


def write_routerbench_csv(path, n: int = 4, task: str = "arc-challenge"):
    routerbench_frame(n, task).to_csv(path)  # with the unnamed index column, like the real files
    return path


def catalogue_for(models: dict[str, tuple[float, float]], out_tokens: int = 100) -> ModelCatalogue:
    return ModelCatalogue.from_mapping({
        "defaults": {"typical_output_tokens": out_tokens},
        "models": {m: {"input_per_1m": p[0], "output_per_1m": p[1]} for m, p in models.items()},
    }, litellm_fallback=False)


def test_routerbench_csv(tmp_path):
    ds = load_dataset(write_routerbench_csv(tmp_path / "arc_challenge_test.csv"))
    assert ds.name == "arc_challenge_test"
    assert ds.models == MODELS
    assert len(ds) == 4
    assert ds.prompts[0] == "Question 0?\nAnswer:"  # list elements joined
    assert ds.prompts[2] == "Question 2?"
    assert ds.tasks == ["arc-challenge"] * 4
    assert ds.ids[3] == "arc-challenge.3"
    assert math.isnan(ds.quality[1, 1])  # the empty cell
    assert ds.quality[3, 1] == 1.0 and ds.quality[2, 1] == 0.0
    np.testing.assert_allclose(ds.cost[:, 0], [0.01, 0.011, 0.012, 0.013])
    assert ds.responses[2] == ["big says 2", "small says 2"]


def test_routerbench_pickle(tmp_path):
    df = routerbench_frame(5, task="mbpp")
    df.loc[2, "m-small"] = np.nan  # real pickles hold floats, NaN for missing
    df["m-small"] = df["m-small"].replace("", np.nan).astype(float)
    path = tmp_path / "routerbench_0shot.pkl"
    df.to_pickle(path)
    assert detect_format(path) == "routerbench-pickle"
    ds = load_dataset(path)
    assert ds.models == MODELS and len(ds) == 5
    assert np.isnan(ds.quality[:, 1]).sum() == 2
    assert ds.prompts[4] == "Question 4?"
    assert ds.tasks == ["mbpp"] * 5
    # same content as the CSV route
    csv = load_dataset(write_routerbench_csv(tmp_path / "x.csv", 5, "mbpp"))
    np.testing.assert_array_equal(np.isnan(csv.quality[:, 0]), np.isnan(ds.quality[:, 0]))
    np.testing.assert_allclose(csv.cost, ds.cost)


def test_pickle_that_is_not_a_dataframe(tmp_path):
    path = tmp_path / "x.pkl"
    pd.Series([1, 2]).to_pickle(path)
    with pytest.raises(DatasetError, match=r"x\.pkl: .*not a pandas DataFrame"):
        load_dataset(path)


def test_routerbench_unknown_columns_strict_and_lenient(tmp_path):
    df = routerbench_frame()
    df["annotator"] = "bob"
    df["m-big|latency"] = 1.5
    path = tmp_path / "t.csv"
    df.to_csv(path)
    with pytest.raises(DatasetError) as err:
        load_dataset(path)
    assert "'annotator'" in str(err.value) and "'m-big|latency'" in str(err.value)
    assert "t.csv" in str(err.value)
    with pytest.warns(UserWarning, match="annotator"):
        ds = load_dataset(path, strict=False)
    assert ds.models == MODELS


def test_routerbench_quality_only_column_is_a_model_priced_by_catalogue(tmp_path):
    df = routerbench_frame()
    df["m-new"] = [1.0, 0.0, 0.5, 1.0]
    path = tmp_path / "t.csv"
    df.to_csv(path)
    cat = catalogue_for({"m-big": (1, 1), "m-small": (1, 1), "m-new": (2.0, 4.0)}, out_tokens=10)
    ds = load_dataset(path, catalogue=cat)
    assert ds.models == [*MODELS, "m-new"]
    j = ds.models.index("m-new")
    in_tok = math.ceil(len(ds.prompts[2]) / 4)
    assert ds.cost[2, j] == pytest.approx((2.0 * in_tok + 4.0 * 10) / 1e6)
    # the file's own costs are untouched
    assert ds.cost[0, 0] == pytest.approx(0.01)


def test_routerdc_json_costs_from_catalogue(tmp_path):
    recs = [
        {"question": "q" * 40, "scores": {"a": 0.25, "b": 1}, "cluster_id": 3},
        {"question": "q" * 8, "scores": {"a": 0, "b": None}, "cluster_id": 1},
    ]
    path = tmp_path / "gsm8k-train.json"
    path.write_text(json.dumps(recs, indent=1))
    cat = catalogue_for({"a": (1.0, 2.0), "b": (10.0, 20.0)}, out_tokens=50)
    ds = load_dataset(path, catalogue=cat)
    assert ds.tasks == ["gsm8k", "gsm8k"]
    assert ds.models == ["a", "b"]
    assert ds.quality[0].tolist() == [0.25, 1.0]
    assert math.isnan(ds.quality[1, 1])
    # price_in * chars/4 + price_out * typical_output_tokens
    assert ds.cost[0, 0] == pytest.approx((1.0 * 10 + 2.0 * 50) / 1e6)
    assert ds.cost[1, 1] == pytest.approx((10.0 * 2 + 20.0 * 50) / 1e6)


def test_routerdc_model_without_price_is_an_error(tmp_path):
    path = tmp_path / "mmlu_test.json"
    path.write_text(json.dumps([{"question": "x", "scores": {"a": 1, "mystery": 0}}]))
    with pytest.raises(DatasetError, match=r"mmlu_test\.json: .*'mystery'"):
        load_dataset(path, catalogue=catalogue_for({"a": (1, 1)}))


def test_routerdc_real_models_priced_by_default_catalogue(tmp_path):
    path = tmp_path / "humaneval_train.json"
    path.write_text(json.dumps([{"question": "def f():", "scores": {
        "mistralai/Mistral-7B-v0.1": 0.0, "meta-llama/Meta-Llama-3-8B": 1.0}}]))
    ds = load_dataset(path)
    assert ds.tasks == ["humaneval"]
    assert np.all(ds.cost > 0) and np.all(ds.cost < 1e-3)


def test_jsonl_generic(tmp_path):
    lines = [
        {"id": "a1", "prompt": "2+2?", "task": "math", "scores": {"x": 1, "y": 0},
         "costs": {"x": 0.002, "y": 0.0001}, "responses": {"x": "4", "y": "5"}},
        {"prompt": "capital of France?", "scores": {"x": True, "y": 0.5},
         "costs": {"x": 0.003}},
        {"prompt": "late model", "scores": {"x": 0, "z": 1}, "costs": {"x": 0.001, "z": 0.5}},
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in lines[:2]) + "\n\n" + json.dumps(lines[2]))
    ds = load_dataset(path)
    assert ds.models == ["x", "y", "z"]
    assert ds.ids == ["a1", "mixed:2", "mixed:4"]  # default id uses the line number
    assert ds.tasks == ["math", "mixed", "mixed"]
    assert ds.quality[1].tolist()[:2] == [1.0, 0.5]
    assert math.isnan(ds.quality[0, 2]) and math.isnan(ds.quality[2, 1])
    assert math.isnan(ds.cost[1, 1])  # the file prices y elsewhere: the gap stays missing
    assert ds.responses[0][:2] == ["4", "5"] and ds.responses[1] == [None, None, None]


def test_jsonl_without_costs_uses_response_length(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"prompt": "p" * 16, "scores": {"x": 1, "y": 1},
                                "responses": {"x": "r" * 40}}) + "\n")
    ds = load_dataset(path, catalogue=catalogue_for({"x": (1.0, 1.0), "y": (1.0, 1.0)}, 7))
    assert ds.cost[0, 0] == pytest.approx((4 + 10) / 1e6)  # response: 40 chars -> 10 tokens
    assert ds.cost[0, 1] == pytest.approx((4 + 7) / 1e6)  # no response: typical tokens


def test_save_jsonl_round_trip(tmp_path):
    ds = load_dataset(write_routerbench_csv(tmp_path / "t.csv", 6))
    out = save_jsonl(ds, tmp_path / "sub" / "t.jsonl")
    back = load_dataset(out)
    assert back.models == ds.models and back.prompts == ds.prompts and back.ids == ds.ids
    assert back.tasks == ds.tasks
    np.testing.assert_array_equal(back.quality, ds.quality)  # NaN positions included
    np.testing.assert_array_equal(back.cost, ds.cost)
    assert back.responses == ds.responses


def test_missing_cells_policy(tmp_path):
    ds = load_dataset(write_routerbench_csv(tmp_path / "t.csv"))
    assert not ds.mask[1, 1] and ds.mask.sum() == ds.mask.size - 1
    quality, cost = ds.eval_matrices()
    assert quality[1, 1] == 0.0
    assert not np.isnan(quality).any() and not np.isnan(cost).any()


def test_directory_concatenates_files_and_union_of_models(tmp_path):
    write_routerbench_csv(tmp_path / "a.csv", 3, "arc")
    (tmp_path / "b.jsonl").write_text(json.dumps({"prompt": "p", "task": "t",
                                                  "scores": {"m-big": 1, "m-other": 0},
                                                  "costs": {"m-big": 0.1, "m-other": 0.2}}))
    (tmp_path / "notes.txt").write_text("not data")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load_dataset(tmp_path)
    assert ds.name == tmp_path.name and len(ds) == 4
    assert ds.models == [*MODELS, "m-other"]
    assert np.isnan(ds.quality[:3, 2]).all() and np.isnan(ds.quality[3, 1])
    assert any("m-other" in str(w.message) for w in caught)


def test_concat_keeps_responses_rows(tmp_path):
    a = load_dataset(write_routerbench_csv(tmp_path / "a.csv", 2))
    b = load_dataset(write_routerbench_csv(tmp_path / "b.csv", 3))
    both = concat_datasets([a, b], "ab")
    assert len(both) == 5 and len(both.responses) == 5 and both.name == "ab"


@pytest.mark.parametrize("name,task", [
    ("mmlu_train.json", "mmlu"), ("gsm8k-test.json", "gsm8k"),
    ("arc_challenge_train.json", "arc_challenge"), ("humaneval_test.json", "humaneval"),
    ("routerbench_0shot.pkl", "routerbench_0shot"),
])
def test_task_from_filename(name, task):
    assert task_from_filename(name) == task


def test_cost_estimates_do_not_depend_on_parsing_responses(tmp_path):
    df = routerbench_frame().drop(columns=["m-small|total_cost"])
    path = tmp_path / "t.csv"
    df.to_csv(path)
    cat = catalogue_for({"m-big": (1, 1), "m-small": (1.0, 3.0)})
    full = load_dataset(path, catalogue=cat)
    lean = load_dataset(path, catalogue=cat, responses=False)
    assert lean.responses is None and full.responses is not None
    np.testing.assert_array_equal(full.cost, lean.cost)
    out_tok = math.ceil(len("small says 2") / 4)  # sized by the response, not typical tokens
    in_tok = math.ceil(len("Question 2?") / 4)
    assert full.cost[2, 1] == pytest.approx((1.0 * in_tok + 3.0 * out_tok) / 1e6)
