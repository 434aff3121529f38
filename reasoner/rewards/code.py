"""Code reward: pull the program out of a completion, append the task's tests, run it in the sandbox.

Extraction (``extract_program``). A completion either holds a fenced block (```python ... ```, also
```py or a bare ```; an unclosed fence runs to the end) or is bare code. ``prefix`` is the code the
completion continues (``meta["code_prefix"]``, by default the prompt: a HumanEval signature + docstring;
empty for MBPP, whose completions are whole programs).

- Fenced: the first block that defines the entry point, else the first block. An indented block is a
  function body and continues the prefix; otherwise the block follows the prefix, so that a rewritten
  function replaces the prompt's stub while the prompt's imports and helpers stay defined.
- Bare, with a prefix: prefix + completion, cut at the first top-level line that cannot belong to the
  program (not ``def``/``class``/``import``/``from``/``@``/``#``): the model's own tests, prints,
  ``if __name__`` blocks or prose after the function.
- Any program that parses loses its ``if __name__ == "__main__":`` blocks (they may read stdin).

Assembly (``assemble_program``): HumanEval ``program + test + check(entry_point)``; MBPP
``test_imports + program + test_list``. The program passes iff it runs to its end (the sandbox contract).

Scores: 1.0 pass, 0.0 fail (wrong, crash, timeout, memory); with ``partial=True`` and a ``test_list``, the
fraction of asserts that pass, each run as its own program (counting asserts inside one program would
trust output the program itself can forge). A sandbox failure (status ``error``) is retried; if it
persists the score is ``None`` (masked out of the update, never a silent 0) and counted in the metrics.

The sandbox is one long-lived ``Sandbox`` per process, made on first use and closed at exit; choose its
backend and size with ``configure_sandbox`` or the env vars ``REASONER_SANDBOX_BACKEND`` (docker) and
``REASONER_SANDBOX_WORKERS`` (4).

>>> print(extract_program("Here:\\n```python\\ndef f(x):\\n    return x + 1\\n```\\nDone.", prefix=""))
def f(x):
    return x + 1
<BLANKLINE>
>>> print(extract_program("    return x + 1\\n\\nprint(f(2))\\n", prefix="def f(x):\\n"))
def f(x):
    return x + 1
<BLANKLINE>
"""

from __future__ import annotations

import ast
import atexit
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace

from reasoner.rewards.base import REWARDS, RewardOutput
from reasoner.tasks.base import Example

FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE)
KEEP_TOP_LEVEL = ("def ", "class ", "async def ", "import ", "from ", "@", "#")


@dataclass(frozen=True)
class SandboxSettings:
    backend: str = "docker"  # or "local": a subprocess on this machine, no isolation (development only)
    workers: int = 4
    timeout_s: float = 10.0  # per program
    memory_mb: int = 512
    retries: int = (
        2  # extra attempts for jobs whose status is ``error`` (the sandbox failed, not the program)
    )
    batch: int = 512  # jobs per Sandbox.run call


_settings: SandboxSettings | None = None  # read from the environment on first use
_sandbox = None  # the process's Sandbox, made by _get_sandbox


def sandbox_settings() -> SandboxSettings:
    global _settings
    if _settings is None:
        _settings = SandboxSettings(
            backend=os.environ.get("REASONER_SANDBOX_BACKEND", "docker"),
            workers=int(os.environ.get("REASONER_SANDBOX_WORKERS", "4")),
        )
    return _settings


def configure_sandbox(
    backend: str | None = None,
    workers: int | None = None,
    timeout_s: float | None = None,
    memory_mb: int | None = None,
    retries: int | None = None,
) -> SandboxSettings:
    """Set how the code reward runs programs; a changed backend or worker count replaces the open sandbox."""
    global _settings
    old = sandbox_settings()
    given = {
        "backend": backend,
        "workers": workers,
        "timeout_s": timeout_s,
        "memory_mb": memory_mb,
        "retries": retries,
    }
    new = replace(old, **{k: v for k, v in given.items() if v is not None})
    if new.backend not in ("docker", "local"):
        raise ValueError(f"sandbox backend must be 'docker' or 'local', got {new.backend!r}")
    if new.workers < 1 or new.retries < 0 or new.timeout_s <= 0:
        raise ValueError(
            f"sandbox settings out of range (need workers >= 1, retries >= 0, timeout_s > 0): {new}"
        )
    if (new.backend, new.workers) != (old.backend, old.workers):
        close_sandbox()
    _settings = new
    return new


def close_sandbox() -> None:
    global _sandbox
    if _sandbox is not None:
        sb, _sandbox = _sandbox, None
        sb.__exit__(None, None, None)


def _get_sandbox():
    global _sandbox
    if _sandbox is None:
        from sandbox import Sandbox

        settings = sandbox_settings()
        sb = Sandbox(backend=settings.backend, workers=settings.workers)
        sb.__enter__()
        _sandbox = sb
        atexit.unregister(close_sandbox)  # registered once, however often the sandbox is replaced
        atexit.register(close_sandbox)
    return _sandbox


# ------------------------------------------------------------------------------------------ extraction


def extract_program(completion: str, prefix: str = "", entry_point: str | None = None) -> str:
    """The program a completion stands for (rules in the module docstring).

    >>> extract_program("```\\ndef g():\\n    pass\\n```", prefix="import os\\ndef g():\\n")
    'import os\\n\\ndef g():\\n    pass\\n'
    """
    blocks = FENCE.findall(completion)
    if blocks:
        defines = [
            b
            for b in blocks
            if entry_point and re.search(rf"^\s*def\s+{re.escape(entry_point)}\s*\(", b, re.M)
        ]
        block = (defines or blocks)[0]
        first = next((line for line in block.splitlines() if line.strip()), "")
        if first[:1] in (" ", "\t"):  # a function body: it continues the prefix
            program = prefix + block
        else:
            program = _standalone_prefix(prefix) + block
    elif prefix:
        program = prefix + _cut_after_function(completion)
    else:
        program = completion
    return _drop_main_guard(program)


def _standalone_prefix(prefix: str) -> str:
    """What of the prefix to keep before a whole program: all of it if it parses, else its imports."""
    if not prefix.strip():
        return ""
    try:
        ast.parse(prefix)
        return prefix.rstrip("\n") + "\n\n\n"
    except SyntaxError:
        imports = [line for line in prefix.splitlines() if line.startswith(("import ", "from "))]
        return "\n".join(imports) + "\n\n" if imports else ""


def _cut_after_function(completion: str) -> str:
    lines = completion.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.strip() and line[0] not in " \t" and not line.startswith(KEEP_TOP_LEVEL):
            return "".join(lines[:i])
    return completion


def _drop_main_guard(program: str) -> str:
    try:
        tree = ast.parse(program)
    except SyntaxError:
        return program  # runs as written and fails in the sandbox: a syntax error is the model's
    guards = [node for node in tree.body if isinstance(node, ast.If) and _is_main_test(node.test)]
    if not guards:
        return program
    lines = program.splitlines(keepends=True)
    for node in reversed(guards):
        del lines[node.lineno - 1 : node.end_lineno]
    return "".join(lines)


def _is_main_test(test: ast.expr) -> bool:
    return (
        isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
        and len(test.comparators) == 1
        and isinstance(test.comparators[0], ast.Constant)
        and test.comparators[0].value == "__main__"
    )


# ------------------------------------------------------------------------------------------ assembly


def assemble_program(program: str, meta: dict) -> str:
    """``program`` followed by the example's tests: HumanEval ``test`` + ``check``, or MBPP ``test_list``.

    >>> print(assemble_program("def f(x):\\n    return x\\n", {"test_list": ["assert f(1) == 1"], "test_imports": ["import math"]}))
    import math
    def f(x):
        return x
    <BLANKLINE>
    assert f(1) == 1
    <BLANKLINE>
    """
    if "test" in meta:
        if "entry_point" not in meta:
            raise KeyError("a HumanEval-style example needs meta['entry_point'] next to meta['test']")
        return f"{program.rstrip()}\n\n{meta['test'].strip()}\n\n\ncheck({meta['entry_point']})\n"
    return _with_tests(program, meta, meta.get("test_list"))


def _with_tests(program: str, meta: dict, tests: Sequence[str] | None) -> str:
    if not tests:
        raise KeyError(
            "a code example needs meta['test'] (HumanEval) or a non-empty meta['test_list'] (MBPP)"
        )
    imports = "".join(line + "\n" for line in meta.get("test_imports") or [])
    return f"{imports}{program.rstrip()}\n\n" + "\n".join(tests) + "\n"


def programs_for(completion: str, example: Example, partial: bool = False) -> list[str]:
    """The programs whose results score this completion: one, or one per assert when ``partial``."""
    meta = example.meta
    program = extract_program(completion, meta.get("code_prefix", example.prompt), meta.get("entry_point"))
    if partial and "test" not in meta and meta.get("test_list"):
        return [_with_tests(program, meta, [t]) for t in meta["test_list"]]
    return [assemble_program(program, meta)]


# ------------------------------------------------------------------------------------------ the reward


@REWARDS.register("code")
def code_reward(
    completions: Sequence[str], examples: Sequence[Example], *, partial: bool = False
) -> RewardOutput:
    """1.0 if the completion's program passes the example's tests, else 0.0; None if the sandbox failed."""
    from sandbox import Job, Status

    if len(completions) != len(examples):
        raise ValueError(f"code reward: {len(completions)} completions for {len(examples)} examples")
    settings = sandbox_settings()
    owners: list[int] = []
    jobs = []
    for i, (text, ex) in enumerate(zip(completions, examples, strict=True)):
        for j, program in enumerate(programs_for(text, ex, partial)):
            owners.append(i)
            jobs.append(
                Job(
                    id=f"{i}.{j}", program=program, timeout_s=settings.timeout_s, memory_mb=settings.memory_mb
                )
            )
    results, retried = run_jobs(jobs)

    per_sample: list[list] = [[] for _ in completions]
    for owner, res in zip(owners, results, strict=True):
        per_sample[owner].append(res)
    scores: list[float | None] = []
    for group in per_sample:
        if any(r.status == Status.ERROR for r in group):
            scores.append(None)
        else:
            scores.append(sum(r.passed for r in group) / len(group))
    statuses = Counter(r.status.value for r in results)
    scored = [s for s in scores if s is not None]
    metrics = {
        "code/pass_rate": sum(s >= 1.0 for s in scored) / len(scored) if scored else 0.0,
        "code/sandbox_errors": float(len(scores) - len(scored)),
        "code/retried_jobs": float(retried),
        "code/timeout_rate": statuses["timeout"] / len(results) if results else 0.0,
        "code/memory_rate": statuses["memory"] / len(results) if results else 0.0,
        "code/mean_duration_s": sum(r.duration_s for r in results) / len(results) if results else 0.0,
    }
    return RewardOutput(scores=scores, metrics=metrics)


def run_jobs(jobs: list) -> tuple[list, int]:
    """Results of ``jobs`` in order, re-running those whose status is ``error``; and how many re-runs there were."""
    from sandbox import Status

    settings, sb = sandbox_settings(), _get_sandbox()
    results = []
    for start in range(0, len(jobs), settings.batch):
        results += sb.run(jobs[start : start + settings.batch])
    retried = 0
    for _ in range(settings.retries):
        again = [i for i, r in enumerate(results) if r.status == Status.ERROR]
        if not again:
            break
        retried += len(again)
        for i, res in zip(again, sb.run([jobs[i] for i in again]), strict=True):
            results[i] = res
    return results, retried
