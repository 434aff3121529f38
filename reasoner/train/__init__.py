"""The RL loop that GRPO, PPO and the variants share: the trainer, the update, advantage estimators, batch
layout, prompt stream, stop/resume, checkpoints, optimiser, distributed ranks, LoRA, metrics and the SFT warm start."""
