"""LoRA through peft (reasoner/train/lora.py): what trains, the reference, merged weights, saving, and resume."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from reasoner.config import ConfigError, LoraSettings, load_config
from reasoner.models import load_policy, load_tokenizer, load_trainable_policy
from reasoner.rollout import Rollout, SamplingParams
from reasoner.rollout.hf import HFEngine
from reasoner.rollout.weights import bucket_nbytes, named_weights, pack_bucket, plan_buckets, unpack_bucket
from reasoner.train.batch import make_batch, sequence_logprobs
from reasoner.train.lora import (
    AdaptersOff,
    check_lora,
    is_lora,
    materialize,
    named_merged_weights,
    save_merged,
)

CPU = torch.device("cpu")
ROLLOUTS = [Rollout(0, [5, 6, 7, 8], [9, 10, 2], "", "stop"), Rollout(1, [11, 12], [13, 14], "", "length")]


def _lora_policy(model_dir, r=4, targets="all-linear", seed=0):
    cfg = load_config(None, [f"model.lora.r={r}", f"model.lora.target_modules={targets}"])
    torch.manual_seed(seed)
    policy = load_trainable_policy(cfg, str(model_dir), CPU)
    with torch.no_grad():  # a trained adapter: B = 0 at init would make every comparison trivially equal
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return policy


def _logp(model, rollouts=ROLLOUTS):
    with torch.no_grad():
        return sequence_logprobs(model, make_batch(rollouts, pad_id=0), temperature=1.0)[0]


@pytest.mark.parametrize(
    "settings, message",
    [
        (LoraSettings(r=-1), "model.lora.r must be >= 0"),
        (LoraSettings(r=8, alpha=0), "model.lora.alpha must be > 0"),
        (LoraSettings(r=8, dropout=1.0), "model.lora.dropout must be in [0, 1)"),
        (LoraSettings(r=8, target_modules="q_proj"), "write [q_proj] for one module"),
        (LoraSettings(r=8, target_modules=[]), "target_modules is empty"),
    ],
)
def test_bad_lora_settings_fail_naming_the_key(settings, message):
    with pytest.raises(
        ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")
    ):
        check_lora(settings)


def test_resuming_with_other_lora_settings_than_the_checkpoint_fails_naming_them(tmp_path):
    from reasoner.train.lora import check_resume

    whole, adapter = tmp_path / "whole", tmp_path / "adapter"
    whole.mkdir()
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 8}))
    check_resume(LoraSettings(r=0), whole)
    check_resume(LoraSettings(r=8), adapter)
    with pytest.raises(ConfigError, match="holds a whole model .* resume with model.lora.r=0"):
        check_resume(LoraSettings(r=8), whole)
    with pytest.raises(ConfigError, match=r"holds a LoRA adapter \(r=8\), but model.lora.r=0"):
        check_resume(LoraSettings(r=0), adapter)
    with pytest.raises(ConfigError, match="rank 8, but model.lora.r=4: resume with model.lora.r=8"):
        check_resume(LoraSettings(r=4), adapter)


def test_unknown_target_module_lists_the_models_linear_layers(tiny_model_dir):
    with pytest.raises(ConfigError, match=r"target_modules=\['qkv'\].*Linear layers of this model: .*q_proj"):
        _lora_policy(tiny_model_dir, targets="[qkv]")


def test_only_adapter_parameters_receive_gradients_and_move(tiny_model_dir):
    from reasoner.train.optim import make_optimizer

    policy = _lora_policy(tiny_model_dir)
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    optimizer = make_optimizer(policy.parameters(), lr=1e-2)
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {
        id(p) for n, p in policy.named_parameters() if "lora_" in n
    }
    logp, _ = sequence_logprobs(policy, make_batch(ROLLOUTS, pad_id=0), temperature=1.0)
    logp.sum().backward()
    with_grad = {n for n, p in policy.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    lora = {n for n, _ in policy.named_parameters() if "lora_" in n}
    assert with_grad == lora and len(lora) == 4 * 7 * 2  # 4 layers x 7 linear layers x (A, B)
    optimizer.step()
    for name, p in policy.named_parameters():
        assert torch.equal(p, before[name]) != (name in lora), name  # adapters moved, the base did not


def test_reference_with_adapters_off_is_the_base_model(tiny_model_dir):
    policy = _lora_policy(tiny_model_dir)
    base = load_policy(str(tiny_model_dir), "float32", CPU)
    reference = AdaptersOff(policy)
    torch.testing.assert_close(_logp(reference), _logp(base), atol=1e-6, rtol=1e-6)  # 1 ulp: other kernels
    assert not torch.allclose(_logp(policy), _logp(base), atol=1e-3)  # the adapters are back on after it
    assert not list(getattr(reference, "parameters", lambda: [])())  # no second copy of any weight


def test_merged_weights_pushed_into_a_plain_model_reproduce_the_adapter_model(tiny_model_dir):
    """The vLLM push path on CPU: merged names and tensors -> buckets -> bytes -> a plain transformers model."""
    policy = _lora_policy(tiny_model_dir)
    base_before = {n: p.detach().clone() for n, p in policy.named_parameters() if "lora_" not in n}
    named = named_weights(policy)
    target = load_policy(str(tiny_model_dir), "float32", CPU)
    assert sorted(n for n, _ in named) == sorted(n for n, _ in target.named_parameters())
    trainable = [n for n, _ in named_weights(policy, only_trainable=True)]
    assert len(trainable) == 4 * 7 and all(n.endswith("_proj.weight") for n in trainable)
    tensors = dict(named)
    buckets = plan_buckets([(n, t.dtype, t.shape) for n, t in named], bucket_bytes=50_000)
    params = dict(target.named_parameters())
    for bucket in buckets:
        buffer = torch.empty(bucket_nbytes(bucket), dtype=torch.uint8)
        pack_bucket(bucket, [materialize(tensors[s.name]) for s in bucket], buffer)
        with torch.no_grad():
            for name, tensor in unpack_bucket(buffer, bucket):
                params[name].copy_(tensor)
    torch.testing.assert_close(_logp(target), _logp(policy), atol=1e-5, rtol=1e-5)
    for name, p in policy.named_parameters():  # merging out of place left the frozen base untouched
        if name in base_before:
            assert torch.equal(p, base_before[name]), name
    # the merged tensors are what peft's own merge computes
    merged = dict((n, materialize(t)) for n, t in named_merged_weights(policy))
    reference = policy.merge_and_unload().state_dict()
    for name, tensor in merged.items():
        torch.testing.assert_close(tensor, reference[name], atol=1e-6, rtol=1e-6)


def test_final_merged_model_generates_like_the_adapter_model(tiny_model_dir, tmp_path):
    from peft import PeftModel

    policy = _lora_policy(tiny_model_dir, r=8)
    tok = load_tokenizer(str(tiny_model_dir))
    prompts = ["12 + 7 = ", "Ann has 3 apples", "#### "]
    greedy = SamplingParams(n=1, temperature=0.0, top_p=1.0, max_new_tokens=12, seed=0)
    want = [r.completion_ids for r in HFEngine(policy, tok).generate(prompts, greedy)]
    want_logp = _logp(policy)
    merged = save_merged(policy, tok, tmp_path / "final", tmp_path / "final-adapter")
    assert not is_lora(merged)
    final = load_policy(str(tmp_path / "final"), "float32", CPU)  # plain transformers
    assert [r.completion_ids for r in HFEngine(final, tok).generate(prompts, greedy)] == want
    torch.testing.assert_close(_logp(final), want_logp, atol=1e-5, rtol=1e-5)
    adapter = PeftModel.from_pretrained(
        load_policy(str(tiny_model_dir), "float32", CPU), tmp_path / "final-adapter"
    )
    torch.testing.assert_close(_logp(adapter), want_logp, atol=0, rtol=0)


def test_lora_critic_trains_adapters_and_head_and_checkpoints_only_them(tiny_model_dir, tmp_path):
    from reasoner.train.checkpoint import load_extra, save_extra
    from reasoner.train.estimators.ppo import PPOEstimator

    cfg = load_config(None, ["algo.name=ppo", "model.lora.r=4"])
    est = PPOEstimator(cfg, None, str(tiny_model_dir), CPU)
    trainable = {n for n, p in est.critic.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("head.") for n in trainable)
    assert {id(p) for g in est.optimizer.param_groups for p in g["params"]} == {
        id(p) for p in est.critic.parameters() if p.requires_grad
    }
    with torch.no_grad():
        for p in est.critic.parameters():
            if p.requires_grad:
                p.normal_()
    save_extra(tmp_path, "critic", est.critic)
    saved = torch.load(tmp_path / "critic.pt", weights_only=True)
    assert set(saved) == {k for k in est.critic.state_dict() if any(t in k for t in ("lora_", "head."))}
    fresh = PPOEstimator(cfg, None, str(tiny_model_dir), CPU)
    load_extra(tmp_path, "critic", fresh.critic)
    batch = make_batch(ROLLOUTS, pad_id=0)
    assert torch.equal(fresh.values(batch), est.values(batch))


def test_lora_reward_model_saves_merged_final_and_adapter(tiny_model_dir, tmp_path):
    from reasoner.rewards.reward_model import load_rm, score_texts
    from reasoner.rlhf.rm_training import train_reward_model

    rows = [{"prompt": f"{i}+1=", "chosen": str(i + 1), "rejected": str(i + 2)} for i in range(16)]
    cfg = load_config(None, ["model.lora.r=4", "rm.steps=3", "rm.batch_size=4", "rm.warmup_steps=0",
                             "rm.lr=1e-2", "rm.save_every=0", "rm.stats_samples=8", "train.tensorboard=false"])  # fmt: skip
    result = train_reward_model(cfg, str(tiny_model_dir), rows, rows[:4], out_dir=tmp_path, progress=False)
    assert result["model"] == str(tmp_path / "final") and result["adapter"] == str(tmp_path / "final-adapter")
    model, tok = load_rm(result["model"])  # AutoModelForSequenceClassification, no peft
    assert not is_lora(model)
    texts = ["1+1=2", "1+1=3"]
    scores = score_texts(model, tok, texts, 2, 64)
    from peft import PeftModel

    base, _ = load_rm(str(tiny_model_dir))  # a fresh random score head: the adapter brings the trained one
    adapter = PeftModel.from_pretrained(base, tmp_path / "final-adapter")
    torch.testing.assert_close(score_texts(adapter, tok, texts, 2, 64), scores, atol=1e-5, rtol=1e-5)


SEVEN_CLI = Path(__file__).with_name("seven_task.py")
SEVEN = [
    "task.name=seven", "task.eval_size=8", "rollout.n=4", "rollout.max_new_tokens=6", "train.prompts_per_step=4",
    "train.micro_batch_size=16", "optim.lr=3e-3", "sft.steps=0", "train.eval_every=0", "train.tensorboard=false",
    "train.cpu_threads=1", "model.lora.r=8",
]  # fmt: skip


def _cli(args, out, signal_at=""):
    import os
    import signal

    cmd = [sys.executable, str(SEVEN_CLI), "train", "--no-progress", *args, f"train.output_dir={out}"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONHASHSEED": "0", "SEVEN_SIGNAL": signal_at},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip


def _stable(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(("time/", "tokens_per_s"))} for r in rows]


@pytest.mark.slow
def test_lora_ppo_run_ends_with_json_line_final_and_adapter(tiny_model_dir, tmp_path):
    """The contract: `reasoner train ... model.lora.r=8` (here PPO with beta > 0: critic and reference too)."""
    run = _cli(SEVEN + [f"model.path={tiny_model_dir}", "algo.name=ppo", "algo.beta=0.04", "train.steps=2"],
               tmp_path)  # fmt: skip
    out, _ = run.communicate(timeout=600)
    assert run.returncode == 0, out
    result = json.loads(out.strip().splitlines()[-1])
    assert result["steps"] == 2 and result["adapter"] == str(tmp_path / "final-adapter")
    assert (tmp_path / "final-adapter" / "adapter_config.json").is_file()
    assert not (tmp_path / "final" / "adapter_config.json").exists()
    load_policy(str(tmp_path / "final"), "float32", CPU)  # plain transformers loads it
    ckpt = tmp_path / "checkpoints" / "step-0000002"
    assert (ckpt / "policy" / "adapter_model.safetensors").is_file()
    assert not (ckpt / "policy" / "model.safetensors").exists()  # the adapter, not a copy of the base
    assert set(torch.load(ckpt / "critic.pt", weights_only=True)) == {
        k for k in torch.load(ckpt / "critic.pt", weights_only=True) if "lora_" in k or k.startswith("head.")
    }


@pytest.mark.slow
def test_lora_run_interrupted_and_resumed_matches_the_uninterrupted_one(tiny_model_dir, tmp_path):
    args = SEVEN + [f"model.path={tiny_model_dir}", "train.steps=4", "train.save_every=0"]
    full = _cli(args, tmp_path / "full")
    assert full.wait(timeout=600) == 0, full.stdout.read()
    stopped = _cli(args, tmp_path / "stopped", signal_at="reward:3:SIGTERM")  # scoring step 2
    out, _ = stopped.communicate(timeout=600)
    assert stopped.returncode == 130 and "interrupted: saved step 2" in out, out
    resumed = _cli(args + ["train.resume=true"], tmp_path / "stopped")
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0 and "resumed from" in out, out
    assert _stable(tmp_path / "stopped" / "metrics.jsonl") == _stable(tmp_path / "full" / "metrics.jsonl")
    from safetensors.torch import load_file

    a = load_file(tmp_path / "full" / "final-adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "stopped" / "final-adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
