"""A reward model on SmolLM2's pretrained backbone (reasoner/rewards/reward_model.py, reasoner/rlhf/rm_training.py):
``AutoModelForSequenceClassification`` from the causal LM keeps its weights, scores each text at its last real
token whatever the padding (the pad token is ``<|im_end|>``, the EOS), and `reasoner rm train` with LoRA learns
a preference written in English, saved as a plain classifier that the RL reward loads."""

from __future__ import annotations

import pytest
import torch

from reasoner.config import load_config
from reasoner.rewards.reward_model import RewardModel, load_rm, score_texts
from reasoner.rlhf.rm_training import train_reward_model
from tests.real_model.conftest import chat_prompts

pytestmark = [pytest.mark.slow, pytest.mark.real_model]

QUESTIONS = [
    "Can you help me with my homework?", "Where is the train station?", "What time is it?",
    "Could you lend me a pen?", "How do I boil an egg?", "Can you recommend a book?",
    "Is it going to rain today?", "How do I get to the museum?", "Can you explain fractions?",
    "What should I cook tonight?", "Where can I buy stamps?", "How do I reset my password?",
]  # fmt: skip
POLITE = "Of course, I would be glad to help. Thank you for asking, and please let me know if you need more."
RUDE = "Figure it out yourself. I do not care, stop bothering me with stupid questions."


def rows(questions):
    return [{"prompt": f"Question: {q}\nAnswer: ", "chosen": POLITE, "rejected": RUDE} for q in questions]


def test_the_reward_model_is_the_pretrained_backbone_and_reads_each_texts_last_token(real_model_dir, real_policy,
                                                                                    real_tokenizer):  # fmt: skip
    model, tok = load_rm(str(real_model_dir))
    assert type(model).__name__ == "LlamaForSequenceClassification" and model.score.weight.shape == (1, 576)
    assert (
        model.config.pad_token_id == tok.pad_token_id == tok.eos_token_id
    )  # <|im_end|>: pads and ends turns
    for name in ("model.layers.29.mlp.down_proj.weight", "model.embed_tokens.weight", "model.norm.weight"):
        assert torch.equal(model.get_parameter(name), real_policy.get_parameter(name)), name
    texts = [
        "Short.",
        chat_prompts(tok, ["A chat with <|im_end|> tokens in the middle"])[0] + "An answer.<|im_end|>\n",
        "A longer text: café ☕, with a few more words in it than the others have.",
    ]
    one_by_one = torch.cat([score_texts(model, tok, [t], batch_size=1) for t in texts])
    torch.testing.assert_close(score_texts(model, tok, texts, batch_size=3), one_by_one, atol=1e-4, rtol=0)


def test_rm_train_with_lora_learns_an_english_preference(real_model_dir, tmp_path):
    train, held_out = rows(QUESTIONS[:8]), rows(QUESTIONS[8:])
    cfg = load_config(None, ["model.lora.r=8", "rm.steps=10", "rm.batch_size=4", "rm.warmup_steps=0", "rm.lr=1e-3",
                             "rm.save_every=0", "rm.eval_every=0", "rm.stats_samples=8", "train.tensorboard=false",
                             "train.cpu_threads=2"])  # fmt: skip
    result = train_reward_model(cfg, str(real_model_dir), train, held_out, out_dir=tmp_path, progress=False)
    assert result["accuracy"] == 1.0 and result["margin"] > 0.5, result  # on questions it never saw
    reward = RewardModel(result["model"])  # the merged classifier the RL reward loads, with its saved stats
    prompts = [r["prompt"] for r in held_out]
    polite, rude = reward.score(prompts, [POLITE] * 4), reward.score(prompts, [RUDE] * 4)
    assert all(p > r for p, r in zip(polite, rude, strict=True))
