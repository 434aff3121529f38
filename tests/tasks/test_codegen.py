"""The procedural code task: deterministic, disjoint splits, short, and scored right by the real sandbox."""

import pytest

from reasoner.rewards import code
from reasoner.rewards.code import code_reward, configure_sandbox
from reasoner.tasks import get_task
from reasoner.tasks.codegen import SLIPPED, SLIPS, TEMPLATES, load

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*local backend is WEAKER"
)  # chosen on purpose in these tests


def test_deterministic_given_split_size_seed():
    a, b = load(None, "train", 200, 0), load(None, "train", 200, 0)
    assert [(e.prompt, e.solution, e.meta["test_list"]) for e in a] == [
        (e.prompt, e.solution, e.meta["test_list"]) for e in b
    ]
    assert [e.prompt for e in load(None, "train", 200, 1)] != [e.prompt for e in a]


def test_train_and_test_are_disjoint_and_deduplicated():
    train, test = load(None, "train", 3000, 0), load(None, "test", None, 0)
    assert len(test) == 500 and len(train) == 3000
    assert not {e.prompt for e in train} & {e.prompt for e in test}
    assert len({e.prompt for e in train}) == len(train)


def test_short_prompts_and_solutions_for_a_character_model():
    examples = load(None, "train", 2000, 0)
    assert max(len(e.prompt) for e in examples) <= 80
    assert max(len(e.solution) for e in examples) <= 30
    assert len({e.prompt.split('"""')[1].split()[1] for e in examples}) > 5  # many templates show up


def test_reference_passes_and_trivial_answers_fail_in_process():
    for ex in load(None, "test", None, 0):
        exec(ex.gold + "\n".join(ex.meta["test_list"]), {})  # the reference passes its own tests
        arg = ex.prompt.split("(", 1)[1].split(")")[0].split(",")[0]
        for body in (f"    return {arg}\n", "    return 0\n", "    return True\n"):
            with pytest.raises(AssertionError):  # echoing the argument or a constant never passes
                exec(ex.prompt + body + "\n".join(ex.meta["test_list"]), {})


def test_half_the_training_solutions_carry_a_slip_the_tests_catch():
    train = load(None, "train", 2000, 0)
    slipped = [e for e in train if e.solution == e.meta["slip"]]
    assert abs(len(slipped) / len(train) - SLIPPED) < 0.04
    for ex in train[:300]:
        namespace: dict = {}
        exec(ex.gold + "\n".join(ex.meta["test_list"]), namespace)  # the reference passes
        with pytest.raises(Exception):  # noqa: B017 - the slip fails an assert or raises (an index past the end)
            exec(ex.prompt + ex.meta["slip"] + "\n".join(ex.meta["test_list"]), {})
    assert all(
        e.gold == e.prompt + e.solution for e in load(None, "test", None, 0)
    )  # test: correct solutions
    assert set(SLIPS) == {doc for _, doc, _, _ in TEMPLATES}


def test_every_template_is_reachable():
    docs = {e.prompt.split('"""')[1] for e in load(None, "train", 3000, 0)}
    for _, doc, _, _ in TEMPLATES:
        head = doc.split("{")[0]
        assert any(d.startswith(head) for d in docs), doc


def test_reward_through_the_sandbox_passes_iff_tests_pass():
    configure_sandbox(backend="local", workers=2, timeout_s=5.0)
    try:
        task = get_task("codegen")
        examples = task.load(None, "test", 40, 0)
        right = code_reward([ex.solution for ex in examples], examples)
        assert right.scores == [1.0] * len(examples)
        wrong = code_reward(["    return None\n"] * len(examples), examples)
        assert wrong.scores == [0.0] * len(examples)
    finally:
        code.close_sandbox()


def test_source_is_refused():
    with pytest.raises(ValueError, match="generated, not loaded"):
        load("some/file.jsonl", "train", None, 0)
