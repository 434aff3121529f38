"""Reward functions of yours: ``task.reward=path/to/file.py:function`` or ``package.module:function``.

Called TRL's way: ``function(completions, prompts=..., **columns) -> list[float | None]``. ``completions`` are
the generated texts; ``prompts`` what each answers (the text, or the chat messages of a conversational row);
every other column of the data row (``Example.columns``, all but ``prompt`` and ``completion``) comes as a
keyword argument holding one value per completion, aligned with them. A score of ``None`` (or NaN) means "could
not score": the sample is masked out of the update, never counted as 0. A function that accepts ``**kwargs``
ignores the columns it does not need::

    def exact_number(completions, sol, **kwargs):
        return [1.0 if c.strip().split()[-1:] == [str(s)] else 0.0 for c, s in zip(completions, sol)]

An exception inside your function stops the run with a ``RewardError`` that names the function, the example
(its row and source, prompt and completion) and your traceback. A slow function can run in worker processes
(``task.reward_workers=N``): each batch is split into N contiguous chunks scored in parallel by N worker
interpreters (``_user_worker``; fresh interpreters, so no ``__main__`` guard is needed anywhere), which load the
function from the same spec with the trainer's ``sys.path``.

This runs your code in the trainer's process (or its workers) with the trainer's rights: it is not a sandbox.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import socket
import subprocess
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from hashlib import sha1
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from reasoner.rewards.base import RewardOutput
from reasoner.tasks.base import Example

# Columns not passed by name: TRL gives the prompt as ``prompts`` and leaves the completion column out.
RESERVED = ("prompt", "completion", "prompts", "completions")


class RewardError(RuntimeError):
    """A user reward function could not be loaded, raised, or returned something that is not one score per
    completion; the message names the function and, for an exception, the example it failed on."""


def is_reward_spec(name: str) -> bool:
    """``file.py:function`` or ``module:function`` (registered reward names have no colon).

    >>> is_reward_spec("my_reward.py:exact_number"), is_reward_spec("math")
    (True, False)
    """
    return ":" in name


def load_function(spec: str) -> Callable:
    target, _, name = spec.rpartition(":")
    if not target or not name.isidentifier():
        raise RewardError(f"reward {spec!r}: give 'path/to/file.py:function' or 'package.module:function'")
    if target.endswith(".py") or "/" in target:
        path = Path(target)
        if not path.is_file():
            raise RewardError(f"reward {spec!r}: no file {target!r} (relative paths start at {Path.cwd()})")
        module_name = f"_reasoner_user_reward_{sha1(str(path.resolve()).encode()).hexdigest()[:12]}"
        if module_name in sys.modules:  # loaded once per process, like an import
            return _function(sys.modules[module_name], spec)
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module  # so that its dataclasses and pickling work
        try:
            module_spec.loader.exec_module(module)
        except Exception as e:
            del sys.modules[module_name]
            raise RewardError(f"reward {spec!r}: importing {target} failed:\n{_user_traceback(e)}") from e
    else:
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as e:
            raise RewardError(
                f"reward {spec!r}: no module {target!r} ({e}); give a file path ('{target.replace('.', '/')}.py:"
                f"{name}') or install the package"
            ) from None
    return _function(module, spec)


def _function(module, spec: str) -> Callable:
    target, _, name = spec.rpartition(":")
    fn = getattr(module, name, None)
    if not callable(fn):
        found = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
        raise RewardError(f"reward {spec!r}: {target} has no function {name!r}; it has: {', '.join(found)}")
    return fn


class UserReward:
    """A user function behind the reward contract: ``(completions, examples) -> RewardOutput``."""

    def __init__(self, spec: str, workers: int = 0):
        self.spec = spec
        self.fn = load_function(spec)  # in this process too, so a bad spec fails before any worker starts
        self.name = spec.rpartition(":")[2]
        self.workers = workers
        self._pool: _Workers | None = None

    def __call__(self, completions: Sequence[str], examples: Sequence[Example], **_) -> RewardOutput:
        if len(completions) != len(examples):
            raise ValueError(
                f"{len(completions)} completions but {len(examples)} examples: they must align 1:1"
            )
        if not completions:
            return RewardOutput(scores=[])
        completions = list(completions)
        prompts = [ex.messages if ex.messages is not None else ex.prompt for ex in examples]
        columns = aligned_columns(examples)
        if self.workers < 1:
            got = _score(self.fn, completions, prompts, columns)
            if isinstance(got, _Failure):
                raise RewardError(self._describe(got, examples, completions)) from got.exception
            return RewardOutput(scores=got)
        if self._pool is None:
            self._pool = _Workers(self.spec, self.workers)
        bounds = _chunks(len(completions), self.workers)
        results = self._pool.map(
            [(completions[a:b], prompts[a:b], {k: v[a:b] for k, v in columns.items()}) for a, b in bounds]
        )
        scores = []
        for (a, _), got in zip(bounds, results, strict=True):
            if isinstance(got, _Failure):
                if got.index is not None:
                    got.index += a
                raise RewardError(self._describe(got, examples, completions))
            scores += got
        return RewardOutput(scores=scores)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def _describe(self, failure: _Failure, examples: Sequence[Example], completions: Sequence[str]) -> str:
        head = f"reward function {self.name!r} ({self.spec}) raised {failure.error}"
        if "unexpected keyword argument" in failure.error:  # the signature, not an example, is at fault
            names = ", ".join(["prompts", *aligned_columns(examples)])
            return (f"{head}\n  hint: every column comes as a keyword argument (here: {names}); end the "
                    f"signature with **kwargs to take only the ones you need")  # fmt: skip
        if failure.index is None:
            where = f"on a batch of {len(completions)} completions (each alone scores without error)"
        else:
            ex = examples[failure.index]
            row = (f"row {ex.meta['index'] + 1} of {ex.meta['source']}" if "source" in ex.meta
                   else f"example {ex.meta.get('task_id', ex.meta.get('index', failure.index))}")  # fmt: skip
            where = (f"on {row}\n  prompt:     {_clip(ex.prompt)}\n"
                     f"  completion: {_clip(completions[failure.index])}")  # fmt: skip
        return f"{head} {where}\n{failure.traceback}"


def aligned_columns(examples: Sequence[Example]) -> dict[str, list[Any]]:
    """Each column of the examples' rows as one list, aligned with them (None where a row lacks it).

    >>> aligned_columns([Example("p", "g", columns={"q": 1, "sol": "a"}), Example("p", "g", columns={"q": 2})])
    {'q': [1, 2], 'sol': ['a', None]}
    """
    keys = dict.fromkeys(k for ex in examples for k in ex.columns if k not in RESERVED)
    return {k: [ex.columns.get(k) for ex in examples] for k in keys}


@dataclass
class _Failure:
    index: int | None  # the first example that fails alone; None if only the whole batch fails
    error: str  # "ValueError: ..."
    traceback: str  # the user's frames
    exception: BaseException | None = None  # in this process only (exceptions need not pickle)

    def __reduce__(self):
        return (_Failure, (self.index, self.error, self.traceback))


def _score(fn: Callable, completions: list[str], prompts: list, columns: dict[str, list]) -> list | _Failure:
    """Scores of one batch, or where the function raised: the batch is retried one example at a time to find
    the first that fails on its own."""
    try:
        return _checked(fn, completions, prompts, columns)
    except RewardError:
        raise  # a wrong return value: the function ran, so no example is to blame
    except Exception as e:
        batch_error = e
    for i in range(len(completions)):  # outside the except block: the user's error is not chained to ours
        try:
            _checked(
                fn, completions[i : i + 1], prompts[i : i + 1], {k: v[i : i + 1] for k, v in columns.items()}
            )
        except RewardError:
            raise
        except Exception as e:
            return _Failure(i, _one_line(e), _user_traceback(e), e)
    return _Failure(None, _one_line(batch_error), _user_traceback(batch_error), batch_error)


def _checked(
    fn: Callable, completions: list[str], prompts: list, columns: dict[str, list]
) -> list[float | None]:
    out = fn(completions, prompts=prompts, **columns)
    name = getattr(fn, "__name__", repr(fn))
    if hasattr(out, "tolist"):  # a numpy array or a tensor
        out = out.tolist()
    if not isinstance(out, (list, tuple)) or len(out) != len(completions):
        got = f"{len(out)} values" if isinstance(out, (list, tuple)) else type(out).__name__
        raise RewardError(f"reward function {name!r} must return a list of {len(completions)} scores (one per "
                          f"completion, None = could not score); it returned {got}")  # fmt: skip
    scores: list[float | None] = []
    for i, s in enumerate(out):
        if s is None or (isinstance(s, float) and math.isnan(s)):
            scores.append(None)
        elif isinstance(s, (int, float)):
            scores.append(float(s))
        else:
            raise RewardError(f"reward function {name!r} returned {s!r} ({type(s).__name__}) as score {i}; "
                              "scores are numbers, or None for 'could not score'")  # fmt: skip
    return scores


# Ctrl-C is the trainer's to handle (it finishes the step), even while the worker starts; the parent's
# sys.path comes as argv[1], so the worker imports exactly what its parent would.
WORKER_BOOT = (
    "import signal; signal.signal(signal.SIGINT, signal.SIG_IGN); "
    "import json, sys; sys.path[:] = json.loads(sys.argv[1]); "
    "from reasoner.rewards._user_worker import main; main(sys.argv[2], int(sys.argv[3]))"
)
STARTUP_TIMEOUT_S = 120.0  # a worker imports the user's module; on a loaded machine that can take a while


class _Workers:
    """``size`` worker interpreters (``_user_worker``), each scoring one chunk of a batch at a time."""

    def __init__(self, spec: str, size: int):
        self.spec = spec
        self.procs: list[subprocess.Popen] = []
        self.conns: list[Connection] = []
        try:
            for _ in range(size):
                ours, theirs = socket.socketpair()
                with theirs:
                    self.procs.append(subprocess.Popen(
                        [sys.executable, "-I", "-c", WORKER_BOOT, json.dumps(sys.path), spec, str(theirs.fileno())],
                        pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, close_fds=True,
                    ))  # fmt: skip
                self.conns.append(Connection(ours.detach()))
            for i, conn in enumerate(self.conns):
                if not conn.poll(STARTUP_TIMEOUT_S):
                    raise RewardError(f"reward {spec!r}: a worker did not start in {STARTUP_TIMEOUT_S:.0f}s")
                status, message = self._recv(i)
                if status != "ready":
                    raise RewardError(message)
        except BaseException:
            self.close()
            raise

    def map(self, requests: list[tuple]) -> list:
        """One request per worker, all sent before any answer is read, so the workers score in parallel."""
        for conn, request in zip(self.conns, requests, strict=False):
            conn.send(request)
        out = []
        for i in range(len(requests)):
            status, payload = self._recv(i)
            if status == "error":
                raise RewardError(payload)
            out.append(payload)
        return out

    def _recv(self, i: int):
        try:
            return self.conns[i].recv()
        except EOFError:
            code = self.procs[i].wait()
            raise RewardError(
                f"reward {self.spec!r}: worker process {self.procs[i].pid} died (exit code {code}) while scoring; "
                "run with task.reward_workers=0 to see the error in the trainer's process"
            ) from None

    def close(self) -> None:
        for conn in self.conns:
            conn.close()  # a worker exits when its socket closes
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.conns, self.procs = [], []


def _chunks(n: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous ranges covering ``range(n)``, sizes differing by at most one.

    >>> _chunks(5, 2)
    [(0, 3), (3, 5)]
    """
    parts = max(1, min(parts, n))
    size, extra = divmod(n, parts)
    bounds, start = [], 0
    for p in range(parts):
        end = start + size + (p < extra)
        bounds.append((start, end))
        start = end
    return bounds


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def _user_traceback(e: BaseException) -> str:
    """The traceback from the user's code down, leaving out our calling frames."""
    tb = e.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(e), e, tb, chain=False)).rstrip()


def _clip(text: str, limit: int = 200) -> str:
    text = repr(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."
