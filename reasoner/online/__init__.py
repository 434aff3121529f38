"""The online loop (``loop``): collect feedback, update the reward model, an RL round, the gate, deploy; and the
simulated users that drive it offline (``simusers``)."""
