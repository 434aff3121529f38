import gzip
import json

import pytest

from reasoner.data import DataError, load_records
from reasoner.tasks import get_task


def test_gsm8k_local_files(shared_data):
    task = get_task("gsm8k")
    test = task.load(str(shared_data / "gsm8k" / "test.jsonl"), "test", None, 0)
    assert len(test) == 1319
    assert test[0].gold == "18" and test[0].solution.strip().endswith("#### 18")
    assert len(task.load(str(shared_data / "gsm8k" / "train.jsonl"), "train", 100, 0)) == 100


def test_humaneval_gz(shared_data):
    rows = load_records(
        str(shared_data / "humaneval" / "HumanEval.jsonl.gz"), required=("task_id", "prompt", "test")
    )
    assert len(rows) == 164


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".parquet", ".json"])
def test_missing_field_names_file_row_and_field(tmp_path, suffix):
    rows = [{"question": "1+1?", "answer": "#### 2"}, {"question": "2+2?"}]
    path = tmp_path / f"data{suffix}"
    if suffix == ".parquet":
        import datasets

        datasets.Dataset.from_list(rows).to_parquet(str(path))
    else:
        text = "\n".join(json.dumps(r) for r in rows)
        path.write_bytes(gzip.compress(text.encode()) if suffix.endswith(".gz") else text.encode())
    with pytest.raises(DataError, match=rf"{path.name}: row 2 has no field 'answer'"):
        get_task("gsm8k").load(str(path), "train", None, 0)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_records(str(tmp_path / "nope.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "x", \n not json')
    with pytest.raises(DataError, match="could not be read"):
        load_records(str(bad))
    with pytest.raises(DataError, match="unknown format '.csv'"):
        (tmp_path / "x.csv").write_text("a,b\n")
        load_records(str(tmp_path / "x.csv"))


def test_arithmetic_splits_are_disjoint_and_deterministic():
    task = get_task("arithmetic")
    train, test = task.load(None, "train", 5000, 0), task.load(None, "test", 500, 0)
    assert not {e.prompt for e in train} & {e.prompt for e in test}
    assert [e.prompt for e in test] == [e.prompt for e in task.load(None, "test", 500, 0)]
    from reasoner.rewards.math import math_reward

    assert all(math_reward(e.solution, e.gold) == 1.0 for e in test)


def test_arithmetic_training_solutions_mix_worked_and_answer_only_styles():
    from reasoner.rewards.math import math_reward
    from reasoner.tasks.arithmetic import ANSWER_ONLY

    train = get_task("arithmetic").load(None, "train", 4000, 0)
    answer_only = [e for e in train if e.solution == f"#### {e.gold}"]
    assert abs(len(answer_only) / len(train) - ANSWER_ONLY) < 0.03
    worked = [e for e in train if e.solution != f"#### {e.gold}"]
    assert all(e.solution.count("=") in (2, 3) for e in worked)  # two or three worked steps
    assert all(math_reward(e.solution, e.gold) == 1.0 for e in train)
    test = get_task("arithmetic").load(None, "test", 200, 0)
    assert all("=" in e.solution for e in test)  # test examples carry the worked solution


def test_unknown_task_lists_valid_ones():
    with pytest.raises(KeyError, match="unknown task 'gsm9k'; valid: arithmetic"):
        get_task("gsm9k")
