"""The smallest task the random tiny model can stumble on: its last number must be 7. Scored by the real checker.

Run as a script, it is `reasoner` with this task registered (for the kill-and-resume test's subprocesses).
"""

import sys

from reasoner.tasks import TASKS
from reasoner.tasks.base import Example, Task


def _load(source, split, size, seed):
    return [Example(prompt=f"{i}: 3+4 is\n", gold="7") for i in range(size or 64)]


if "seven" not in TASKS:
    TASKS.register("seven")(Task(name="seven", reward="math", load=_load, kind="math"))

if __name__ == "__main__":
    from reasoner.cli import main

    sys.exit(main(sys.argv[1:]))
