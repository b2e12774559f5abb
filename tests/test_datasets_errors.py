"""Every malformed input raises DatasetError naming the file and the row/line."""

from __future__ import annotations

import json

import pytest

from router.datasets import DatasetError, load_dataset, load_split
from tests.test_datasets_loaders import routerbench_frame


def _csv(tmp_path, df, name="bad.csv"):
    path = tmp_path / name
    df.to_csv(path)
    return path


def test_empty_files(tmp_path):
    for name in ("e.csv", "e.jsonl", "e.json", "e.pkl"):
        (tmp_path / name).write_text("")
        with pytest.raises(DatasetError, match=rf"{name}: file is empty"):
            load_dataset(tmp_path / name)
    (tmp_path / "blank.jsonl").write_text("\n  \n")
    with pytest.raises(DatasetError, match=r"blank\.jsonl: file is empty"):
        load_dataset(tmp_path / "blank.jsonl")


def test_header_only_csv(tmp_path):
    path = _csv(tmp_path, routerbench_frame().iloc[:0])
    with pytest.raises(DatasetError, match=r"bad\.csv: file is empty: a header but no data rows"):
        load_dataset(path)


def test_unknown_format(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("hello world\n")
    with pytest.raises(DatasetError, match=r"data\.txt: unknown format"):
        load_dataset(path)
    with pytest.raises(DatasetError, match=r"unknown source 'parquet'"):
        load_dataset(path, source="parquet")


def test_bad_json_on_line_n(tmp_path):
    path = tmp_path / "d.jsonl"
    good = json.dumps({"prompt": "p", "scores": {"a": 1}, "costs": {"a": 0.1}})
    path.write_text(f"{good}\n{good}\n{{\"prompt\": \"oops\", \n")
    with pytest.raises(DatasetError, match=r"d\.jsonl: line 3: invalid JSON"):
        load_dataset(path)


def test_bad_json_list_names_line_and_column(tmp_path):
    path = tmp_path / "mmlu_train.json"
    path.write_text('[\n {"question": "q", "scores": {"a": 1}},\n {"question": "q" "scores"}\n]')
    with pytest.raises(DatasetError, match=r"mmlu_train\.json: line 3 column \d+: invalid JSON"):
        load_dataset(path)


def test_non_literal_prompt_at_row_n(tmp_path):
    df = routerbench_frame(5)
    df.loc[3, "prompt"] = "plain text, not a list literal ["
    path = _csv(tmp_path, df)
    with pytest.raises(DatasetError) as err:
        load_dataset(path)
    msg = str(err.value)
    assert "bad.csv" in msg and "row 4 (line 5)" in msg and "not a Python literal" in msg


def test_literal_that_is_not_text(tmp_path):
    df = routerbench_frame(3)
    df.loc[1, "prompt"] = "{'a': 1}"
    with pytest.raises(DatasetError, match=r"bad\.csv: row 2 .*not a list of strings"):
        load_dataset(_csv(tmp_path, df))


def test_row_line_accounts_for_multiline_cells(tmp_path):
    df = routerbench_frame(4)
    df.loc[0, "prompt"] = "['''line one\nline two\nline three''']"  # real newlines
    df.loc[2, "m-big"] = 7
    with pytest.raises(DatasetError) as err:
        load_dataset(_csv(tmp_path, df))
    # row 3 starts on line 6: header, row 1 spans lines 2-4, row 2 is line 5
    assert "row 3 (line 6)" in str(err.value)
    assert "outside [0, 1]" in str(err.value) and "'m-big'" in str(err.value)


@pytest.mark.parametrize("value", [1.5, -0.1])
def test_quality_outside_unit_interval_jsonl(tmp_path, value):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"prompt": "p", "scores": {"a": 1}, "costs": {"a": 0}}) + "\n"
                    + json.dumps({"prompt": "p", "scores": {"a": value}}) + "\n")
    with pytest.raises(DatasetError, match=r"q\.jsonl: line 2: quality .* outside \[0, 1\]"):
        load_dataset(path)


def test_quality_outside_unit_interval_routerdc(tmp_path):
    path = tmp_path / "arc_challenge_test.json"
    path.write_text(json.dumps([{"question": "q", "scores": {"mistralai/Mistral-7B-v0.1": 0}},
                                {"question": "q", "scores": {"mistralai/Mistral-7B-v0.1": 2}}]))
    with pytest.raises(DatasetError, match=r"arc_challenge_test\.json: record 2 of 2: quality"):
        load_dataset(path)


def test_quality_not_a_number(tmp_path):
    df = routerbench_frame(3)
    df.loc[2, "m-small"] = "yes"
    with pytest.raises(DatasetError, match=r"bad\.csv: row 3 .*quality for 'm-small' is not a "
                                           r"number: 'yes'"):
        load_dataset(_csv(tmp_path, df))


def test_negative_cost(tmp_path):
    df = routerbench_frame(3)
    df.loc[1, "m-big|total_cost"] = -1
    with pytest.raises(DatasetError, match=r"bad\.csv: row 2 .*cost"):
        load_dataset(_csv(tmp_path, df))


def test_missing_required_columns_and_fields(tmp_path):
    df = routerbench_frame(2).drop(columns=["prompt"])
    with pytest.raises(DatasetError, match=r"bad\.csv: header: missing required column 'prompt'"):
        load_dataset(_csv(tmp_path, df))
    df = routerbench_frame(2).drop(columns=["m-big"])
    with pytest.raises(DatasetError, match=r"missing required quality column.*'m-big'"):
        load_dataset(_csv(tmp_path, df, "b2.csv"))
    path = tmp_path / "f.jsonl"
    path.write_text(json.dumps({"prompt": "p", "scores": {"a": 1}, "costs": {"a": 1}}) + "\n"
                    + json.dumps({"scores": {"a": 1}}) + "\n")
    with pytest.raises(DatasetError, match=r"f\.jsonl: line 2: missing required field 'prompt'"):
        load_dataset(path)
    path.write_text(json.dumps({"prompt": "p"}) + "\n")
    with pytest.raises(DatasetError, match=r"f\.jsonl: line 1: missing required field 'scores'"):
        load_dataset(path)


def test_unknown_jsonl_field_strict_and_lenient(tmp_path):
    path = tmp_path / "u.jsonl"
    path.write_text(json.dumps({"prompt": "p", "scores": {"a": 1}, "costs": {"a": 0.1},
                                "socres": {}}) + "\n")
    with pytest.raises(DatasetError, match=r"u\.jsonl: unrecognised fields: 'socres'"):
        load_dataset(path)
    with pytest.warns(UserWarning, match="socres"):
        assert len(load_dataset(path, strict=False)) == 1


def test_costs_for_unscored_model(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"prompt": "p", "scores": {"a": 1}, "costs": {"a": 1, "b": 2}}))
    with pytest.raises(DatasetError, match=r"c\.jsonl: .*no scores anywhere: \['b'\]"):
        load_dataset(path)


def test_json_top_level_must_be_a_list_of_objects(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('[1, 2]')
    with pytest.raises(DatasetError, match=r"x\.json: record 1 of 2: expected a JSON object"):
        load_dataset(path)
    path.write_text('[]')
    with pytest.raises(DatasetError, match=r"x\.json: the list of records is empty"):
        load_dataset(path)


def test_missing_path_and_bad_fraction(tmp_path):
    with pytest.raises(DatasetError, match="no such file or directory"):
        load_dataset(tmp_path / "nope.csv")
    with pytest.raises(DatasetError, match="no such file or directory"):
        load_split(tmp_path / "nope")
    with pytest.raises(DatasetError, match="test_fraction"):
        load_split(tmp_path, test_fraction=1.5)
    with pytest.raises(DatasetError, match="no data files"):
        load_dataset(tmp_path)
