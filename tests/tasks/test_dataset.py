"""The generic ``dataset`` task: templates, field names, conversational prompts, nested answers, clear errors."""

import json

import pytest

from reasoner.config import ConfigError, load_config
from reasoner.data import DataError
from reasoner.tasks import load_examples

ROWS = [
    {"q": "What is 2+3?", "sol": "5", "tag": "add"},
    {"q": "What is 7-4?", "sol": "3", "tag": "sub"},
]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _load(data, *overrides, split="train"):
    cfg = load_config(None, ["task.name=dataset", f"task.train={data}", f"task.test={data}", *overrides])
    return load_examples(cfg.task, split, seed=0)


def test_a_template_over_the_row_fields(tmp_path):
    data = _jsonl(tmp_path / "d.jsonl", ROWS)
    a, b = _load(data, "task.prompt=Solve: {q}\\nAnswer:", "task.answer=sol")
    assert (a.prompt, a.gold, a.messages) == ("Solve: What is 2+3?\nAnswer:", "5", None)
    assert b.columns == ROWS[1] and b.meta == {"index": 1, "source": data}
    assert a.solution is None
    (one,) = _load(data, "task.prompt={q}", "task.answer=sol", "task.train_size=1")
    assert one.prompt in (r["q"] for r in ROWS)


def test_the_prompt_field_by_name_and_a_solution_field(tmp_path):
    rows = [{"prompt": "Q: 1+1?\nA:", "answer": 2, "completion": " 2"}]
    (ex,) = _load(_jsonl(tmp_path / "d.jsonl", rows), "task.answer=answer", "task.solution=completion")
    assert (ex.prompt, ex.gold, ex.solution) == ("Q: 1+1?\nA:", "2", " 2")  # prompt: TRL's default column


def test_a_missing_template_field_names_file_row_and_field(tmp_path):
    data = _jsonl(tmp_path / "d.jsonl", [ROWS[0], {"sol": "1", "tag": "x"}])
    with pytest.raises(
        DataError, match=r"d.jsonl: row 2 has no field 'q', which task.prompt 'Q: \{q\}' uses"
    ):
        _load(data, "task.prompt=Q: {q}", "task.answer=sol")


def test_a_missing_answer_field_names_file_row_and_field(tmp_path):
    data = _jsonl(tmp_path / "d.jsonl", [ROWS[0], {"q": "?", "tag": "x"}])
    with pytest.raises(DataError, match=r"d.jsonl: row 2 has no field 'sol' \(present: q, tag\)"):
        _load(data, "task.prompt={q}", "task.answer=sol")


def test_a_malformed_template_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="literal brace is written twice"):
        _load(_jsonl(tmp_path / "d.jsonl", ROWS), "task.prompt='Q: {q'", "task.answer=sol")


def test_without_answer_the_default_math_reward_is_refused(tmp_path):
    data = _jsonl(tmp_path / "d.jsonl", ROWS)
    with pytest.raises(ConfigError, match="task.answer=FIELD"):
        _load(data, "task.prompt={q}")
    (ex, _) = _load(data, "task.prompt={q}", "task.reward=r.py:f")  # a reward of yours may need no gold
    assert ex.gold == ""


def test_data_and_held_out_data_are_required(tmp_path):
    cfg = load_config(None, ["task.name=dataset", "task.answer=sol"])
    with pytest.raises(ConfigError, match="task.train=FILE_OR_HUB_ID"):
        load_examples(cfg.task, "train", 0)
    cfg = load_config(None, ["task.name=dataset", "task.answer=sol", f"task.train={tmp_path / 'd.jsonl'}"])
    with pytest.raises(ConfigError, match="task.test is not set"):
        load_examples(cfg.task, "test", 0)


CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]


def test_conversational_prompts_render_with_the_chat_template(tmp_path, tiny_model_dir):
    from reasoner.models import load_tokenizer
    from reasoner.train.stream import prompt_renderer

    data = _jsonl(tmp_path / "d.jsonl", [{"messages": CHAT, "sol": "4"}])
    cfg = load_config(None, ["task.name=dataset", f"task.train={data}", f"task.test={data}",
                             "task.prompt=messages", "task.answer=sol", f"model.path={tiny_model_dir}"])  # fmt: skip
    (ex,) = load_examples(cfg.task, "train", 0)
    assert ex.messages == CHAT and ex.prompt == "system: Be brief.\nuser: 2+2?"
    tok = load_tokenizer(str(tiny_model_dir))
    rendered = prompt_renderer(tok, cfg)(ex)  # task.chat_template is off: the messages alone decide
    assert rendered == tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert "Be brief." in rendered and "2+2?" in rendered


def test_a_prompt_field_that_is_neither_text_nor_messages_fails(tmp_path):
    data = _jsonl(tmp_path / "d.jsonl", [{"messages": [{"role": "user"}], "sol": "4"}])
    with pytest.raises(
        DataError, match=r"row 1: prompt field 'messages' must hold a string or a list of chat"
    ):
        _load(data, "task.prompt=messages", "task.answer=sol")


def test_verl_parquet_loads_as_it_is(tmp_path):
    import datasets

    rows = [{"data_source": "openai/gsm8k", "prompt": [{"role": "user", "content": f"What is {i}+1?"}],
             "ability": "math", "reward_model": {"style": "rule", "ground_truth": str(i + 1)},
             "extra_info": {"split": "train", "index": i}} for i in range(3)]  # fmt: skip
    path = tmp_path / "train.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    examples = _load(str(path), "task.answer=reward_model.ground_truth")
    assert [ex.gold for ex in examples] == ["1", "2", "3"]
    assert examples[2].messages == rows[2]["prompt"] and examples[2].columns["extra_info"]["index"] == 2
    (ex, *_) = _load(str(path), "task.prompt=Q{extra_info[index]}: {reward_model[ground_truth]}",
                     "task.answer=reward_model.ground_truth")  # fmt: skip
    assert ex.prompt == "Q0: 1"
    with pytest.raises(DataError, match=r"train.parquet: row 1 has no field 'reward_model.answer' inside "
                                        r"'reward_model' \(present: ground_truth, style\)"):  # fmt: skip
        _load(str(path), "task.answer=reward_model.answer")


def test_a_builtin_task_keeps_its_template_and_takes_an_override(shared_data):
    gsm8k = str(shared_data / "gsm8k" / "test.jsonl")
    base = ["task.name=gsm8k", f"task.train={gsm8k}", "task.train_size=3"]
    default = load_examples(load_config(None, base).task, "train", 0)
    assert default[0].prompt == f"Question: {default[0].columns['question'].strip()}\nAnswer:"
    custom = load_examples(load_config(None, [*base, "task.prompt=Solve: {question}\\n"]).task, "train", 0)
    assert [c.prompt for c in custom] == [f"Solve: {d.columns['question']}\n" for d in default]
    assert [c.gold for c in custom] == [d.gold for d in default]  # the task's answer and reward stay
    with pytest.raises(ConfigError, match="task.answer names a field of your data for task.name=dataset"):
        load_examples(load_config(None, [*base, "task.answer=answer"]).task, "train", 0)


def test_the_procedural_arithmetic_task_takes_a_template():
    cfg = load_config(None, ["task.prompt=Question: {question}\\nAnswer:", "task.train_size=2"])
    examples = load_examples(cfg.task, "train", 0)
    assert all(ex.prompt.startswith("Question: ") and ex.prompt.endswith("?\nAnswer:") for ex in examples)
