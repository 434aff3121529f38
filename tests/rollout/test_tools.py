"""The tool loop (reasoner.rollout.tools): stop at the call, run it in the sandbox, resume after the output.

The policy is a scripted ``Engine`` (each row writes the next text of its script, cut at the stop strings as a real
engine cuts it, and records the exact prompts it was resumed from); the sandbox is real: the local backend here,
the Docker pool in the tests marked ``docker``. The real engines' stop strings are tested on the tiny model.
"""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
import torch

from reasoner.config import ConfigError, load_config
from reasoner.models import build_char_tokenizer, load_policy, load_tokenizer
from reasoner.rewards.code import configure_sandbox, sandbox_settings
from reasoner.rollout.base import Rollout, SamplingParams, ToolTrace, reward_text
from reasoner.rollout.hf import HFEngine
from reasoner.rollout.tools import CallResult, ToolEngine, ToolSettings, check_tools, tool_metrics
from reasoner.train.trainer import score

TOK = build_char_tokenizer()
TOK.padding_side = "left"


class ScriptedEngine:
    """Row ``r`` of prompt ``p`` writes ``scripts[p][r][turn]``, cut after the first stop string, then EOS."""

    def __init__(self, scripts: dict[str, list[list[str]]]):
        self.scripts, self.calls = scripts, []
        self.where: dict[tuple, tuple[str, int, int]] = {}  # prompt ids -> (prompt, row, turn)

    def generate(self, prompts, params: SamplingParams) -> list[Rollout]:
        self.calls.append((prompts, params))
        out = []
        for i, prompt in enumerate(prompts):
            for k in range(params.n):
                if isinstance(prompt, str):
                    ids = TOK(prompt, add_special_tokens=False)["input_ids"]
                    key, row, turn = prompt, k, 0
                else:
                    ids = list(prompt)
                    key, row, turn = self._resumed(ids)
                text = self.scripts[key][row][turn]
                reason = next((s for s in params.stop if s in text), None)
                if reason is not None:  # cut at the earliest stop string, kept in the completion
                    text = text[: min(text.index(s) + len(s) for s in params.stop if s in text)]
                comp = TOK(text, add_special_tokens=False)["input_ids"] + (
                    [] if reason else [TOK.eos_token_id]
                )
                finish = "stop"
                if len(comp) > params.max_new_tokens:
                    comp, finish, reason = comp[: params.max_new_tokens], "length", None
                self.where[tuple(ids + comp)] = (key, row, turn)
                out.append(
                    Rollout(
                        i, ids, comp, TOK.decode(comp, skip_special_tokens=True), finish, stop_reason=reason
                    )
                )
        return out

    def _resumed(self, ids: list[int]) -> tuple[str, int, int]:
        """A resumed prompt is a previous turn's prompt + completion + the tool's output: find that turn."""
        for end in range(len(ids), 0, -1):
            if tuple(ids[:end]) in self.where:
                key, row, turn = self.where[tuple(ids[:end])]
                return key, row, turn + 1
        raise AssertionError(f"resumed from tokens no turn produced: {TOK.decode(ids)!r}")

    def sync_weights(self, model):
        pass

    def sleep(self):
        pass

    def wake_up(self):
        pass


@pytest.fixture(autouse=True)
def local_sandbox():
    old = sandbox_settings()
    configure_sandbox(backend="local", workers=2)
    yield
    configure_sandbox(backend=old.backend, workers=old.workers)


def _engine(scripts, **settings) -> tuple[ToolEngine, ScriptedEngine]:
    inner = ScriptedEngine(scripts)
    return ToolEngine(inner, TOK, ToolSettings(**{"max_turns": 2, **settings})), inner


PARAMS = SamplingParams(n=2, temperature=1.0, max_new_tokens=120, seed=0)


def test_stops_at_the_call_runs_it_and_resumes_after_its_output():
    scripts = {"Q: 6*7?\n": [["<python>print(6*7)</python><output>\n41\n</output>\n#### 41", "#### 42"],
                             ["#### 40"]]}  # fmt: skip
    engine, inner = _engine(scripts)
    first, second = engine.generate(["Q: 6*7?\n"], PARAMS)
    # the policy's made-up output after </python> never happened: generation stopped there
    assert first.text == "<python>print(6*7)</python><output>\n42\n</output>\n#### 42"
    assert first.tools.statuses == ["passed"] and reward_text(first) == "<python>print(6*7)</python>#### 42"
    call, out, answer = "<python>print(6*7)</python>", "<output>\n42\n</output>\n", "#### 42"
    eos = [1]  # the policy's too
    assert first.action_mask == [1] * len(call) + [0] * len(out) + [1] * len(answer) + eos
    assert first.completion_ids[-1] == TOK.eos_token_id and first.finish_reason == "stop"
    # the second turn resumed from the exact tokens: prompt + call + output, one row, its own seed
    (resumed,), params = inner.calls[1]
    assert resumed == first.prompt_ids + first.completion_ids[: len(call) + len(out)]
    assert (
        params.n == 1 and params.seed != PARAMS.seed and params.max_new_tokens == 120 - len(call) - len(out)
    )
    assert second.text == "#### 40" and second.tools.statuses == [] and second.action_mask == [1] * 8
    assert len(inner.calls) == 2  # the row that answered alone was not resumed


def test_max_turns_bounds_the_calls_and_a_call_that_no_turn_follows_is_not_run():
    call = "<python>print(1)</python>"
    engine, inner = _engine({"p\n": [[call, call, call, "never"]]}, max_turns=3)
    (r,) = engine.generate(["p\n"], SamplingParams(n=1, max_new_tokens=200))
    assert r.tools.statuses == ["passed", "passed"] and len(inner.calls) == 3
    assert r.text == (call + "<output>\n1\n</output>\n") * 2 + call and r.stop_reason == "</python>"


def test_errors_timeouts_and_the_budget_are_said_plainly():
    scripts = {"p\n": [["<python>1/0</python>", "<python>print(2)</python>", "<python>print(3)</python>", "end"]],
               "q\n": [["<python>while True: pass</python>", "end"]]}  # fmt: skip
    engine, _ = _engine(scripts, max_turns=4, calls_per_answer=2, timeout_s=1.0)
    p, q = engine.generate(["p\n", "q\n"], SamplingParams(n=1, max_new_tokens=400))
    assert p.tools.statuses == ["failed", "passed", "budget"]
    assert "<output>\nerror: ZeroDivisionError: division by zero\n</output>\n" in p.text
    assert "<output>\nerror: no tool budget left in this answer; the call did not run\n</output>\n" in p.text
    assert q.tools.statuses == ["timeout"] and "error: timed out after 1 s and was stopped" in q.text


def test_seconds_budget_shortens_the_timeout_and_then_refuses():
    loop = "<python>while True: pass</python>"
    engine, _ = _engine({"p\n": [[loop, loop, "end"]]}, max_turns=3, timeout_s=5.0, seconds_per_answer=1.0)
    t0 = time.time()
    (r,) = engine.generate(["p\n"], SamplingParams(n=1, max_new_tokens=300))
    assert r.tools.statuses == ["timeout", "budget"] and time.time() - t0 < 4.5


def test_the_token_budget_covers_tool_output_and_cuts_the_row():
    engine, _ = _engine({"p\n": [["<python>print('x' * 500)</python>", "#### x"]]}, output_chars=400)
    (r,) = engine.generate(["p\n"], SamplingParams(n=1, max_new_tokens=60))
    assert len(r.completion_ids) == 60 and r.finish_reason == "length" and r.tools.statuses == ["passed"]
    assert sum(r.action_mask) == len("<python>print('x' * 500)</python>")


def test_a_stop_string_that_closes_no_call_goes_on_without_output():
    # a bare ``` fence opening a block ends the turn too (the stop string is "\n```\n"): no call, no output
    turns = ["see:\n```\n", "not code\n```\n", "more\n```python\nprint(5)\n```\n", "#### 5"]
    inner = ScriptedEngine({"p\n": [turns]})
    engine = ToolEngine(inner, TOK, ToolSettings(format="fence", max_turns=4))
    (r,) = engine.generate(["p\n"], SamplingParams(n=1, max_new_tokens=300))
    assert r.tools.statuses == ["passed"]
    assert (
        r.text == "see:\n```\nnot code\n```\nmore\n```python\nprint(5)\n```\n<output>\n5\n</output>\n#### 5"
    )


def test_sandbox_failures_make_the_answer_unscored_not_wrong():
    def broken(codes, timeouts, memory_mb):
        return [CallResult("error", "", "", 0.0) for _ in codes]

    inner = ScriptedEngine({"What is 6*7?\n": [["<python>print(6*7)</python>", "#### 42"], ["#### 42"]]})
    engine = ToolEngine(inner, TOK, ToolSettings(), executor=broken)
    rollouts = engine.generate(["What is 6*7?\n"], PARAMS)
    assert rollouts[0].tools.infra_error and "the sandbox failed to run this call" in rollouts[0].text
    from reasoner.rewards import get_reward
    from reasoner.tasks.base import Example

    ex = Example("What is 6*7?\n", "42")
    rewards, scored, metrics = score(get_reward("math"), None, 0.0, rollouts, [ex, ex])
    assert scored.tolist() == [False, True] and rewards.tolist() == [0.0, 1.0]
    assert metrics["tool/sandbox_errors"] == 1.0 and metrics["tool/calls_per_answer"] == 0.5


def test_tool_metrics_and_reward_text_without_tools():
    plain = Rollout(0, [1], [2], "#### 3", "stop")
    assert reward_text(plain) == "#### 3" and tool_metrics([plain])["tool/calls_per_answer"] == 0.0
    traced = Rollout(0, [1], [2], "x", "stop", tools=ToolTrace(["passed"], answer="#### 3"))
    assert reward_text(traced) == "#### 3"


def test_config_validation_names_the_key():
    check_tools(load_config(None, ["rollout.tools=[python]", "rollout.max_turns=3"]).rollout)
    with pytest.raises(ConfigError, match="max_turns >= 2"):
        check_tools(load_config(None, ["rollout.tools=[python]"]).rollout)
    with pytest.raises(ConfigError, match="needs a tool"):
        check_tools(load_config(None, ["rollout.max_turns=3"]).rollout)
    with pytest.raises(ConfigError, match="rollout.tools"):
        load_config(None, ["rollout.tools=[bash]"])
    with pytest.raises(ConfigError, match="tool_calls_per_answer"):
        check_tools(load_config(None, ["rollout.tools=[python]", "rollout.max_turns=2",
                                       "rollout.tool_calls_per_answer=0"]).rollout)  # fmt: skip


@pytest.mark.parametrize("sampler", ["fast", "generate"])
def test_hf_engine_stops_at_a_string_and_resumes_from_token_ids(tiny_model_dir, sampler):
    tok = load_tokenizer(str(tiny_model_dir))
    engine = HFEngine(load_policy(str(tiny_model_dir), "float32", torch.device("cpu")), tok, sampler=sampler)
    prompts = ["ab", "cd", "hello", "x"]
    greedy = SamplingParams(n=2, temperature=0.0, max_new_tokens=30)
    free = engine.generate(prompts, greedy)  # greedy: the cut rows must be prefixes of the free ones
    stops = (free[0].text[3:5], free[2].text[6])  # strings the free completions contain
    cut = engine.generate(prompts, replace(greedy, stop=stops))
    hit = 0
    for f, c in zip(free, cut, strict=True):
        if c.stop_reason is not None:
            hit += 1
            end = min(f.text.index(s) + len(s) for s in stops if s in f.text)  # the earliest stop, kept
            assert c.text == f.text[:end] and c.finish_reason == "stop"
            assert c.completion_ids == f.completion_ids[: len(c.completion_ids)]
        else:
            assert c.completion_ids == f.completion_ids and not any(s in f.text for s in stops)
    assert hit > 0
    # token-id prompts are taken as they are: the same greedy continuation as the string
    ids = tok("ab", add_special_tokens=False)["input_ids"]
    greedy = SamplingParams(n=1, temperature=0.0, max_new_tokens=12)
    assert (
        engine.generate([ids], greedy)[0].completion_ids == engine.generate(["ab"], greedy)[0].completion_ids
    )
