"""A user reward worker as its own interpreter: ``python -I -c <BOOT> SYS_PATH_JSON SPEC FD``, started by
``reasoner.rewards.user`` (its ``WORKER_BOOT``).

A fresh interpreter rather than a multiprocessing child, so it never imports the caller's main module: a user
reward runs in workers the same from ``reasoner train``, a script without an ``if __name__ == "__main__"``
guard, ``python -c`` or a notebook. It loads the function from its spec, says ``("ready", None)`` (or
``("error", message)``), then scores one chunk per request over the socket ``FD`` (a
``multiprocessing.connection.Connection``: length-prefixed pickles) until the parent closes it.
"""

from __future__ import annotations


def main(spec: str, fd: int) -> None:
    from multiprocessing.connection import Connection

    from reasoner.rewards.user import RewardError, _score, load_function

    conn = Connection(fd)
    try:
        fn = load_function(spec)
    except RewardError as e:
        conn.send(("error", str(e)))
        return
    conn.send(("ready", None))
    while True:
        try:
            completions, prompts, columns = conn.recv()
        except EOFError:  # the parent is done (or gone)
            return
        try:
            conn.send(("ok", _score(fn, completions, prompts, columns)))
        except RewardError as e:  # a wrong return value
            conn.send(("error", str(e)))
