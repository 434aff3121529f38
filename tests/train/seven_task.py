"""The smallest task the random tiny model can stumble on: its last number must be 7. Scored by the real checker.

Run as a script, it is `reasoner` with this task registered (for the kill-and-resume test's subprocesses).
``SEVEN_SIGNAL=WHERE:N:SIG[:COUNT]`` makes the process send itself ``SIG`` (COUNT times, default once) at the
N-th call of ``reward`` (every scoring of a training step or an evaluation) or of ``optimizer`` (AdamW's step,
right after the parameters moved): interrupts that land at an exact point of the run.
"""

import os
import signal
import sys

from reasoner.rewards import REWARDS, get_reward
from reasoner.tasks import TASKS
from reasoner.tasks.base import Example, Task


def _load(source, split, size, seed):
    return [Example(prompt=f"{i}: 3+4 is\n", gold="7") for i in range(size or 64)]


def _signal_hook(where: str):
    """A function that counts its calls and sends the configured signal at the configured call."""
    spec = os.environ.get("SEVEN_SIGNAL", "").split(":")
    calls = [0]

    def maybe_signal():
        if spec[0] != where:
            return
        calls[0] += 1
        if calls[0] == int(spec[1]):
            for _ in range(int(spec[3]) if len(spec) > 3 else 1):
                os.kill(os.getpid(), getattr(signal, spec[2]))

    return maybe_signal


def _seven_reward():
    hook, math = _signal_hook("reward"), get_reward("math")

    def reward(completions, examples, **kwargs):
        out = math(completions, examples, **kwargs)
        hook()
        return out

    return reward


def _signal_in_optimizer_step():
    import torch

    hook, step = _signal_hook("optimizer"), torch.optim.AdamW.step

    def patched(self, *args, **kwargs):
        out = step(self, *args, **kwargs)
        hook()
        return out

    torch.optim.AdamW.step = patched


if "seven" not in TASKS:
    REWARDS.register("seven")(_seven_reward())
    TASKS.register("seven")(Task(name="seven", reward="seven", load=_load, kind="math"))

if __name__ == "__main__":
    from reasoner.cli import main

    if os.environ.get("SEVEN_SIGNAL", "").startswith("optimizer:"):
        _signal_in_optimizer_step()
    sys.exit(main(sys.argv[1:]))
