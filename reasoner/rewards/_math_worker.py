"""A math checker worker as its own interpreter: ``python -c <_BOOT> SYS_PATH_JSON FD``, started by ``_math_pool`` (its ``WORKER_BOOT``).

The worker is a fresh interpreter, not a child of multiprocessing, so it never imports the caller's main
module: the checker works the same from a script, ``python -c``, a script read from stdin or a notebook, with
no ``if __name__ == "__main__"`` guard. It talks to its parent over the socket ``FD`` (a
``multiprocessing.connection.Connection``: length-prefixed pickles), and runs ``_math_pool._serve`` on it.
"""

from __future__ import annotations

import sys


def main(fd: int) -> None:
    from multiprocessing.connection import Connection

    from reasoner.rewards._math_pool import MEMORY_HEADROOM_MB, _serve

    headroom = sys.argv[3] if len(sys.argv) > 3 else str(MEMORY_HEADROOM_MB)
    _serve(Connection(fd), None if headroom == "none" else int(headroom))
