"""`reasoner eval`: canonical solutions score perfectly, pass@k matches hand values, files are checked."""

import argparse
import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

from reasoner.data import DataError
from reasoner.evaluate import EvalReport, add_eval_arguments, read_completions, run_eval, score_completions
from reasoner.rewards import code
from reasoner.tasks import get_task

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*local backend is WEAKER"
)  # chosen on purpose in these tests
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
HUMANEVAL = SHARED / "humaneval" / "HumanEval.jsonl.gz"
GSM8K_TEST = SHARED / "gsm8k" / "test.jsonl"

# Rows of the sanitized MBPP test set, in its format (task_id, prompt, code, test_imports, test_list).
MBPP_ROWS = [
    {
        "task_id": 2,
        "prompt": "Write a function to find the shared elements from the given two lists.",
        "code": "def similar_elements(test_tup1, test_tup2):\n  res = tuple(set(test_tup1) & set(test_tup2))\n  return (res) ",
        "test_imports": [],
        "test_list": [
            "assert set(similar_elements((3, 4, 5, 6),(5, 7, 4, 10))) == set((4, 5))",
            "assert set(similar_elements((1, 2, 3, 4),(5, 4, 3, 7))) == set((3, 4))",
            "assert set(similar_elements((11, 12, 14, 13),(17, 15, 14, 13))) == set((13, 14))",
        ],
    },
    {
        "task_id": 3,
        "prompt": "Write a python function to identify non-prime numbers.",
        "code": "import math\ndef is_not_prime(n):\n    result = False\n    for i in range(2,int(math.sqrt(n)) + 1):\n"
        "        if n % i == 0:\n            result = True\n    return result",
        "test_imports": [],
        "test_list": [
            "assert is_not_prime(2) == False",
            "assert is_not_prime(10) == True",
            "assert is_not_prime(35) == True",
            "assert is_not_prime(37) == False",
        ],
    },
    {
        "task_id": 82,
        "prompt": "Write a function to find the volume of a sphere.",
        "code": "import math\ndef volume_sphere(r):\n  volume=(4/3)*math.pi*r*r*r\n  return volume",
        "test_imports": ["import math"],
        "test_list": [
            "assert math.isclose(volume_sphere(10), 4188.790204786391, rel_tol=0.001)",
            "assert math.isclose(volume_sphere(25), 65449.84694978735, rel_tol=0.001)",
            "assert math.isclose(volume_sphere(20), 33510.32163829113, rel_tol=0.001)",
        ],
    },
]


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_eval_arguments(parser)
    return parser.parse_args([*argv, "--no-progress"])


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def mbpp_file(tmp_path):
    return _write_jsonl(tmp_path / "mbpp.jsonl", MBPP_ROWS)


@pytest.fixture(autouse=True)
def _close_sandbox():
    yield
    code.close_sandbox()


def test_mbpp_file_canonical_end_to_end(mbpp_file, tmp_path, capsys):
    out = tmp_path / "report.json"
    rc = run_eval(
        _args(
            "--task",
            "mbpp",
            "--data",
            str(mbpp_file),
            "--completions",
            "canonical",
            "--backend",
            "local",
            "--out",
            str(out),
        )
    )
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["metrics"]["pass@1"] == 1.0
    assert report["metrics"]["examples"] == 3
    assert [r["task_id"] for r in report["records"]] == [2, 3, 82]
    table = out.with_suffix(".md").read_text()
    assert "| mbpp | 3 | 1 | 100.00% |" in table
    assert table.strip() in capsys.readouterr().out


def test_pass_at_k_matches_hand_values(mbpp_file, tmp_path):
    right = {r["task_id"]: r["code"] for r in MBPP_ROWS}
    wrong = "def similar_elements(a, b):\n    return ()\n"
    lines = [
        # task 2: 4 samples, 1 right (fenced, chat style) -> pass@1 = 1/4, pass@2 = 1 - C(3,2)/C(4,2) = 1/2
        {"task_id": 2, "completions": [wrong, wrong, wrong]},
        {"task_id": 2, "completion": f"Here you go:\n```python\n{right[2]}\n```"},
        # task 3 (named by row index): 4 samples, 2 right -> pass@1 = 1/2, pass@2 = 1 - C(2,2)/C(4,2) = 5/6
        {
            "index": 1,
            "completions": [right[3], "def is_not_prime(n):\n    return False", right[3], "syntax error("],
        },
        # task 82: 4 samples, none right -> 0, 0
        {"task_id": 82, "completions": ["def volume_sphere(r):\n    return r ** 3"] * 4},
    ]
    comps = _write_jsonl(tmp_path / "completions.jsonl", lines)
    out = tmp_path / "report.json"
    rc = run_eval(
        _args(
            "--task",
            "mbpp",
            "--data",
            str(mbpp_file),
            "--completions",
            str(comps),
            "--k",
            "1,2",
            "--backend",
            "local",
            "--out",
            str(out),
        )
    )
    assert rc == 0
    report = json.loads(out.read_text())
    assert [r["correct"] for r in report["records"]] == [1, 2, 0]
    assert report["metrics"]["pass@1"] == pytest.approx((1 / 4 + 1 / 2 + 0) / 3)
    assert report["metrics"]["pass@2"] == pytest.approx((1 / 2 + 5 / 6 + 0) / 3)
    assert report["n"] == 4


def test_k_larger_than_samples_is_refused(mbpp_file, tmp_path):
    with pytest.raises(ValueError, match="pass@5 needs at least 5"):
        run_eval(
            _args(
                "--task",
                "mbpp",
                "--data",
                str(mbpp_file),
                "--completions",
                "canonical",
                "--k",
                "1,5",
                "--out",
                str(tmp_path / "r.json"),
            )
        )


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["not json"], r"completions.jsonl:1: not a JSON object"),
        ([json.dumps({"completion": "x"})], "needs 'task_id' or 'index'"),
        ([json.dumps({"task_id": 2, "completion": 5})], "needs 'completion' \\(a string\\)"),
        ([json.dumps({"task_id": 999, "completion": "x"})], "no example with task_id 999"),
        ([json.dumps({"task_id": 2, "completion": "x"})], "2 of 3 examples have no completion"),
    ],
)
def test_bad_completions_file_fails_clearly(mbpp_file, tmp_path, lines, message):
    path = tmp_path / "completions.jsonl"
    path.write_text("\n".join(lines) + "\n")
    examples = get_task("mbpp").load(str(mbpp_file), "test", None, 0)
    with pytest.raises(DataError, match=message):
        read_completions(path, examples)


def test_missing_field_and_unreadable_file_fail_clearly(tmp_path):
    rows = [{k: v for k, v in MBPP_ROWS[0].items() if k != "test_list"}]
    bad = _write_jsonl(tmp_path / "mbpp.jsonl", rows)
    with pytest.raises(DataError, match="no field 'test_list'"):
        run_eval(
            _args(
                "--task",
                "mbpp",
                "--data",
                str(bad),
                "--completions",
                "canonical",
                "--out",
                str(tmp_path / "r.json"),
            )
        )
    garbage = tmp_path / "he.jsonl"
    garbage.write_bytes(b"\x00\xff{{{ not json")
    with pytest.raises(DataError, match="could not be read"):
        run_eval(
            _args(
                "--task",
                "humaneval",
                "--data",
                str(garbage),
                "--completions",
                "canonical",
                "--out",
                str(tmp_path / "r.json"),
            )
        )
    with pytest.raises(DataError, match="not found"):
        read_completions(tmp_path / "missing.jsonl", [])


def test_gsm8k_canonical_1319_of_1319(tmp_path):
    out = tmp_path / "gsm8k.json"
    rc = run_eval(
        _args("--task", "gsm8k", "--data", str(GSM8K_TEST), "--completions", "canonical", "--out", str(out))
    )
    report = json.loads(out.read_text())
    wrong = [r for r in report["records"] if r["correct"] != 1]
    assert wrong == []
    assert rc == 0
    assert report["metrics"]["examples"] == 1319 and report["metrics"]["correct"] == 1319
    assert report["metrics"]["accuracy"] == 1.0 and report["metrics"]["extracted"] == 1.0


def test_math_accuracy_counts_wrong_answers():
    task = get_task("gsm8k")
    examples = task.load(str(GSM8K_TEST), "test", None, 0)[:2]  # golds 18 and 3
    report = score_completions(task, examples, [["#### 18", "#### 17"], ["no answer here", "so 3"]])
    assert [r["correct"] for r in report.records] == [1, 1]
    assert report.metrics["accuracy"] == pytest.approx(0.5)
    assert report.metrics["extracted"] == pytest.approx(3 / 4)


def test_math_file_canonical_end_to_end(tmp_path):
    rows = [
        {
            "problem": "Simplify $\\frac{2}{4}$.",
            "solution": "Divide: $\\boxed{\\frac{1}{2}}$.",
            "answer": "\\frac{1}{2}",
        },
        {"problem": "Solve $x^2=9$, $x>0$.", "solution": "So $x=\\boxed{3}$."},
        {"problem": "Write $0.5$ as a percent.", "solution": "It is $\\boxed{50\\%}$."},
    ]
    data, out = _write_jsonl(tmp_path / "math.jsonl", rows), tmp_path / "math.json"
    assert (
        run_eval(
            _args("--task", "math", "--data", str(data), "--completions", "canonical", "--out", str(out))
        )
        == 0
    )
    assert json.loads(out.read_text())["metrics"]["accuracy"] == 1.0


def test_humaneval_canonical_first_problems_local(tmp_path):
    out = tmp_path / "he.json"
    rc = run_eval(
        _args(
            "--task",
            "humaneval",
            "--data",
            str(HUMANEVAL),
            "--completions",
            "canonical",
            "--limit",
            "8",
            "--backend",
            "local",
            "--out",
            str(out),
        )
    )
    report = json.loads(out.read_text())
    assert rc == 0 and report["metrics"]["pass@1"] == 1.0 and report["metrics"]["examples"] == 8


@pytest.mark.docker
def test_humaneval_canonical_164_of_164_docker(tmp_path):
    out = tmp_path / "he.json"
    rc = run_eval(
        _args(
            "--task",
            "humaneval",
            "--data",
            str(HUMANEVAL),
            "--completions",
            "canonical",
            "--backend",
            "docker",
            "--workers",
            "4",
            "--out",
            str(out),
        )
    )
    report = json.loads(out.read_text())
    failed = [r["task_id"] for r in report["records"] if r["correct"] != 1]
    assert failed == []
    assert rc == 0
    assert report["metrics"]["examples"] == 164 and report["metrics"]["pass@1"] == 1.0


def _tiny_engine(tmp_path):
    import torch

    from reasoner.models import build_tiny_model, load_policy, load_tokenizer
    from reasoner.rollout.hf import HFEngine

    path = build_tiny_model(
        tmp_path / "tiny", hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2
    )
    tok = load_tokenizer(str(path))
    return HFEngine(load_policy(str(path), device=torch.device("cpu")), tok, batch_size=8)


def _unbiased(n: int, c: int, k: int) -> float:
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)  # Chen et al. 2021, by hand


def test_evaluate_model_with_the_tiny_model(tmp_path):
    from reasoner.evaluate import evaluate_model

    code.configure_sandbox(backend="local", workers=2)
    engine = _tiny_engine(tmp_path)
    task = get_task("codegen")
    examples = task.load(None, "test", 3, 0)
    report = evaluate_model(
        engine, task, examples, n=2, temperature=1.0, max_new_tokens=12, k_values=(1, 2), progress=False
    )
    assert report.n == 2 and len(report.records) == 3
    assert all(len(r["completions"]) == 2 and set(r["scores"]) <= {0.0, 1.0} for r in report.records)
    for k in (1, 2):  # the unbiased estimator over the per-sample records
        expected = sum(_unbiased(2, r["scores"].count(1.0), k) for r in report.records) / 3
        assert report.metrics[f"pass@{k}"] == pytest.approx(expected)
    with pytest.raises(ValueError, match="greedy"):
        evaluate_model(engine, task, examples, n=2, temperature=0.0)


def test_pass_at_k_of_the_tiny_model_on_golds_we_choose(tmp_path):
    # The tiny model writes noise; seeded sampling writes the same noise twice. Make each prompt's gold the
    # answer its samples give most often (or none), so we know which samples are right, then evaluate again and compare
    # pass@k with the values computed here from our own scoring of those samples.
    from reasoner.evaluate import evaluate_model
    from reasoner.rewards.math import extract_answer, math_reward

    engine = _tiny_engine(tmp_path)
    task = get_task("arithmetic")
    examples = task.load(None, "test", 6, 0)
    n = 4
    sample = dict(n=n, temperature=1.0, max_new_tokens=48, k_values=(2, 3), seed=7, progress=False)
    first = evaluate_model(engine, task, examples, **sample)
    texts = [r["completions"] for r in first.records]
    answers = [[a for a in map(extract_answer, group) if a is not None] for group in texts]
    # the commonest answer, except on every third prompt an answer no sample gives
    golds = [max(a, key=a.count) if a and i % 3 else "-987654321" for i, a in enumerate(answers)]
    chosen = [replace(ex, gold=gold) for ex, gold in zip(examples, golds, strict=True)]
    report = evaluate_model(engine, task, chosen, **sample)

    assert [r["completions"] for r in report.records] == texts  # the same samples, in the same groups
    right = [sum(math_reward(t, g) == 1.0 for t in group) for group, g in zip(texts, golds, strict=True)]
    assert any(0 < c < n for c in right) and 0 in right, (
        f"want prompts with some and with no right sample: {right}"
    )
    assert [r["correct"] for r in report.records] == right
    assert report.metrics["accuracy"] == pytest.approx(sum(right) / (n * len(examples)))
    for k in (2, 3):
        assert report.metrics[f"pass@{k}"] == pytest.approx(
            sum(_unbiased(n, c, k) for c in right) / len(examples)
        )
    assert report.metrics["pass@2"] < report.metrics["pass@3"]


def test_report_markdown_shows_unscored():
    report = EvalReport(
        task="mbpp",
        n=1,
        metrics={"pass@1": 0.5, "examples": 2, "samples": 2, "correct": 1, "unscored": 1},
        records=[{}, {}],
    )
    assert report.to_markdown().splitlines()[-1] == "| mbpp | 2 | 1 | 50.00% | 1 |"


def test_dataset_task_with_a_reward_of_yours_from_completions_and_from_a_model(
    tmp_path, tiny_model_dir, monkeypatch
):
    """`reasoner eval --task dataset`: your data, your prompt template and your reward, as `reasoner train` reads them."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_reward.py").write_text(
        "def exact(completions, sol, prompts, **kw):\n"
        "    return [1.0 if c.strip() == str(s) else 0.0 for c, s in zip(completions, sol)]\n"
    )
    data = _write_jsonl(tmp_path / "data.jsonl", [{"q": "1+2=", "sol": 3}, {"q": "2+2=", "sol": 4}])
    done = _write_jsonl(
        tmp_path / "done.jsonl", [{"index": 0, "completion": " 3"}, {"index": 1, "completion": "5"}]
    )
    flags = ["--task", "dataset", "--data", str(data), "--prompt", "{q}", "--reward", "my_reward.py:exact"]
    assert run_eval(_args(*flags, "--completions", str(done), "--out", "c.json")) == 0
    report = json.loads((tmp_path / "c.json").read_text())
    assert report["metrics"]["mean_reward"] == pytest.approx(0.5)
    assert [r["scores"] for r in report["records"]] == [[1.0], [0.0]]
    # the tiny model's greedy noise, scored by the same function: prompts rendered from the template
    args = _args(*flags, "--model", str(tiny_model_dir), "--max-new-tokens", "4", "--out", "m.json")
    assert run_eval(args) == 0
    records = json.loads((tmp_path / "m.json").read_text())["records"]
    assert len(records) == 2 and all(r["scores"] in ([0.0], [1.0]) for r in records)
    # the math checker against --answer when no reward is given; nothing to score against is refused
    assert run_eval(_args(*flags[:6], "--answer", "sol", "--completions", str(done), "--out", "a.json")) == 0
    assert json.loads((tmp_path / "a.json").read_text())["metrics"]["mean_reward"] == pytest.approx(0.5)
    with pytest.raises(DataError, match="--answer FIELD .* or --reward"):
        run_eval(_args(*flags[:6], "--completions", str(done), "--out", "x.json"))
