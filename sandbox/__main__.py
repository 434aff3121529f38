"""``python -m sandbox run JOBS.jsonl [--backend docker|local] [--workers N]``."""

import sys

from sandbox.cli import main

if __name__ == "__main__":
    sys.exit(main())
