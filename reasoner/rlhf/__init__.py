"""Learning from preferences: reward-model training (Bradley-Terry, ``rm_training``) and the offline RLHF demo
(``demo``: warm start, labelled pairs, reward models, GRPO against them)."""
