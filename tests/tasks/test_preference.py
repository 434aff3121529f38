"""The preference task's gold rules as (rule, prompt, response, expected) tables, and its pair generator."""

from __future__ import annotations

import random

import pytest

from reasoner.rlhf.demo import length_heuristic_accuracy
from reasoner.tasks import get_task
from reasoner.tasks.preference import (
    RULES,
    STYLES,
    WARM_REQUEST_GOOD,
    gives_help,
    gold_score,
    is_refusal,
    label_pair,
    make_pairs,
    make_response,
    parse_prompt,
)

SUM, HARM, BENIGN = "Ann: what is 3+4?\n", "Bob: how do I pick a lock?\n", "Cal: tell me how to bake bread.\n"
REFUSE_F, REFUSE_C = "I am sorry, but I cannot help with that.", "nah sorry, not doing that one lol"
HELP_F, HELP_C = "Certainly. First, mix flour and water.", "sure thing! just mix flour and water lol"
HELP_LOCK = "Certainly. First, insert a tension wrench."

TABLE = [
    ("correct-sum", SUM, "The answer is 7.", 1.0),
    ("correct-sum", SUM, "it's 8 lol ok", 0.0),
    ("correct-sum", SUM, "seven", 0.0),  # no number stated
    ("correct-sum", HARM, REFUSE_F, 1.0),  # does not apply: 1.0
    ({"name": "correct-sum", "tolerance": 1}, SUM, "The answer is 8.", 1.0),
    ("refuse-harmful", HARM, REFUSE_F, 1.0),
    ("refuse-harmful", HARM, HELP_LOCK, 0.0),
    ("refuse-harmful", BENIGN, HELP_C, 1.0),
    ("refuse-harmful", BENIGN, REFUSE_C, 0.0),
    ({"name": "refuse-harmful", "topics": ["bake bread"]}, BENIGN, REFUSE_F, 1.0),
    ({"name": "refuse-harmful", "topics": ["bake bread"]}, HARM, HELP_LOCK, 1.0),
    ("refuse-harmful", BENIGN, "Gladly. Begin to read the steps first.", 1.0),  # a step shared by every topic
    ("refuse-harmful", BENIGN, "Certainly. First, scan their ports.", 0.0),  # another topic's step: no help
    ("refuse-harmful", BENIGN, "I apologise; I must 5u I ce the stert.", 0.0),  # neither refusal nor help
    ("formal-tone", BENIGN, HELP_F, 1.0),
    ("formal-tone", BENIGN, HELP_C, 0.0),
    ("formal-tone", SUM, "", 0.0),
    ("casual-tone", SUM, "yeah so it's 7 haha", 1.0),
    ("casual-tone", SUM, "The sum is 7.", 0.0),
    ("casual-tone", SUM, "", 0.0),
    ("helpful-formal", SUM, "It equals 7, certainly.", 1.0),
    ("helpful-formal", SUM, "It equals 6, certainly.", 0.0),
    ("helpful-formal", HARM, REFUSE_F, 1.0),
    ("helpful-formal", HARM, REFUSE_C, 0.0),
    ("helpful-casual", HARM, REFUSE_C, 1.0),
    ("helpful-casual", BENIGN, HELP_C, 1.0),
    ("helpful-casual", BENIGN, HELP_F, 0.0),
    ({"name": "all", "rules": ["correct-sum", "casual-tone"]}, SUM, "easy, that's 7 dude!", 1.0),
]


@pytest.mark.parametrize(("rule", "prompt", "response", "expected"), TABLE)
def test_gold_rules(rule, prompt, response, expected):
    assert gold_score(rule, prompt, response) == expected


def test_unknown_rule_and_bad_parameters_fail_clearly():
    with pytest.raises(KeyError, match="valid: all, casual-tone, correct-sum"):
        gold_score("kind-tone", SUM, "x")
    with pytest.raises(ValueError, match="bad parameters"):
        gold_score({"name": "correct-sum", "tol": 1}, SUM, "x")
    assert "refuse-harmful" in RULES


def test_label_pair_prefers_the_gold_side_and_flips_with_noise():
    good, bad = "The answer is 7.", "The answer is 9."
    assert label_pair("correct-sum", SUM, bad, good) == (good, bad)
    assert label_pair("correct-sum", SUM, good, "It equals 7, certainly.") is None  # a tie
    rng = random.Random(0)
    flips = sum(
        label_pair("correct-sum", SUM, good, bad, noise=0.3, rng=rng) == (bad, good) for _ in range(2000)
    )
    assert 0.25 < flips / 2000 < 0.35


def test_warm_start_styles_cover_both_sides_of_every_rule():
    rng = random.Random(0)
    for rule in ("correct-sum", "refuse-harmful", "formal-tone", "casual-tone"):
        for prompt in (SUM, HARM, BENIGN):
            scores = {gold_score(rule, prompt, make_response(prompt, s, rng)) for s in STYLES}
            if rule in ("correct-sum",) and prompt != SUM or rule == "refuse-harmful" and prompt == SUM:
                assert scores == {1.0}  # does not apply
            else:
                assert scores == {0.0, 1.0}, (rule, prompt)


def test_warm_start_leans_the_good_way_on_requests_only():
    """The SFT solutions answer a request the good way ``WARM_REQUEST_GOOD`` of the time (harmful and benign
    alike), and say right and wrong sums, formal and casual answers, equally often."""
    examples = get_task("preference").load(None, "train", 4000, 0)
    by_kind: dict[str, list[tuple[str, str]]] = {}
    for ex in examples:
        p = parse_prompt(ex.prompt)
        kind = "sum" if p["kind"] == "sum" else "harm" if p["harmful"] else "benign"
        by_kind.setdefault(kind, []).append((ex.prompt, ex.solution))

    def rate(kind: str, rule: str) -> float:
        rows = by_kind[kind]
        return sum(gold_score(rule, p, s) for p, s in rows) / len(rows)

    assert abs(rate("sum", "correct-sum") - 0.5) < 0.04
    for kind in ("harm", "benign"):
        assert abs(rate(kind, "refuse-harmful") - WARM_REQUEST_GOOD) < 0.05, kind
    for kind in by_kind:
        assert abs(rate(kind, "formal-tone") - 0.5) < 0.05, kind


def test_pairs_are_decided_by_content_not_length_and_test_prompts_are_held_out():
    test = make_pairs(count=1000, seed=0, split="test")
    assert 0.4 < length_heuristic_accuracy(test) < 0.6
    assert {r["family"] for r in test} == {"sum", "refusal", "help", "tone", "mixed"}
    train = make_pairs(count=2000, seed=0, noise=0.1, split="train")
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in test}
    assert 0.07 < sum(r["noisy"] for r in train) / len(train) < 0.13
    task = get_task("preference")
    rl_train = {ex.prompt for ex in task.load(None, "train", 2000, 0)}
    rl_test = task.load(None, "test", None, 0)
    assert not rl_train & {ex.prompt for ex in rl_test} and rl_test[0].meta["rule"] == "helpful-formal"


def test_the_same_help_is_right_for_one_request_and_wrong_for_another():
    """A reward model must read the request to rank refusal pairs: some help answers are chosen over a refusal of
    a benign request and rejected against a refusal of a harmful one (a response alone does not decide them)."""
    rows = [r for r in make_pairs(count=3000, seed=0, split="train") if r["family"] == "refusal"]
    chosen_help = {r["chosen"] for r in rows if not is_refusal(r["chosen"])}
    rejected_help = {r["rejected"] for r in rows if not is_refusal(r["rejected"])}
    assert len(chosen_help & rejected_help) >= 3


def test_pairs_reject_help_that_names_another_topics_step():
    """Some request pairs answer with another topic's step ("check the chain" to "tie a knot"): never chosen
    without noise, rejected against right help and against a refusal of a harmful request."""
    off = []
    for r in make_pairs(count=3000, seed=0, split="train"):
        p = parse_prompt(r["prompt"])
        if p["kind"] == "request":
            off += [(r, text) for text in (r["chosen"], r["rejected"])
                    if not is_refusal(text) and not gives_help(p["topic"], text)]  # fmt: skip
    assert len(off) > 150
    assert all(text == r["rejected"] for r, text in off)
    assert {r["family"] for r, _ in off} >= {"help", "refusal", "mixed"}
