"""Multi-turn rollouts with a Python interpreter: the policy calls the sandbox mid-answer and reads the output.

:class:`ToolEngine` wraps any ``Engine`` (HF with either sampler, vLLM) and runs turns:

1. every live row generates until EOS, its token budget, or the end of a tool call (``SamplingParams.stop``:
   ``</python>`` for the ``tag`` format, a closing fence after a ```python block for ``fence``);
2. the calls of all rows that stopped at one run in the sandbox together, as one batch (each with
   ``rollout.tool_timeout_s`` and ``tool_memory_mb`` inside the sandbox's own limits: no network, processes,
   time; and a per-answer budget of calls and sandbox seconds: a call past it is refused, saying so);
3. each output, cut to ``rollout.tool_output_chars`` and with the error, timeout or refusal said plainly, is
   appended as ``<output>...</output>`` and those rows resume from the exact tokens so far, up to
   ``rollout.max_turns`` generation turns (a call at the end of the last turn is not run).

``rollout.max_new_tokens`` bounds the whole completion, tool outputs included (the batch width the trainer
sees). The result is one ``Rollout`` per row whose ``completion_ids`` hold every turn and every output, with
``action_mask`` 1 on the policy's tokens and 0 on the outputs (context, not action: no loss, KL, entropy or
value target sees them; reasoner/batch.py), ``logprobs`` the engine's for the policy's tokens (0.0 on outputs)
and ``tools`` (:class:`ToolTrace`): the status of each call, the policy's own text without the outputs (what
the reward scores: copying the output into the answer is the policy's job) and whether the sandbox itself
failed (status ``error``: the rollout is then unscored, as in code RL, never a silent 0).

A sample answer of the tiny model (``tag`` format, two turns)::

    What is 573*629?
    <python>print(573*629)</python><output>
    360417
    </output>
    #### 360417
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from reasoner.rollout.base import Engine, Rollout, SamplingParams, ToolTrace

OPEN, CLOSE = "<output>\n", "</output>\n"


@dataclass(frozen=True)
class CallFormat:
    """How a tool call is written: the stop strings that end a turn at a call, and how to read its code."""

    stops: tuple[str, ...]
    pattern: re.Pattern  # the call at the end of a turn's text; group 1 is the code

    def code(self, turn_text: str) -> str | None:
        found = self.pattern.search(turn_text)
        return None if found is None else found.group(1)


FORMATS = {
    "tag": CallFormat(("</python>",), re.compile(r"<python>(.*?)</python>\s*\Z", re.DOTALL)),
    # a closing fence on its own line, after a ```python (or ```py) block opened in the same turn
    "fence": CallFormat(("\n```\n",), re.compile(r"```(?:python3?|py)[ \t]*\n(.*?)\n```\n\s*\Z", re.DOTALL)),
}


@dataclass(frozen=True)
class ToolSettings:
    format: str = "tag"
    max_turns: int = 2
    timeout_s: float = 5.0
    memory_mb: int = 256
    calls_per_answer: int = 4
    seconds_per_answer: float = 15.0
    output_chars: int = 200

    def __post_init__(self) -> None:
        from reasoner.config import ConfigError

        if self.format not in FORMATS:
            raise ConfigError(f"rollout.tool_format must be one of {', '.join(FORMATS)}; got {self.format!r}")
        if self.max_turns < 2:
            raise ConfigError(f"rollout.tools need rollout.max_turns >= 2 (a turn after each call to read its "
                              f"output); got {self.max_turns}")  # fmt: skip
        if self.timeout_s <= 0 or self.seconds_per_answer <= 0 or self.calls_per_answer < 1:
            raise ConfigError("rollout.tool_timeout_s and tool_seconds_per_answer must be > 0 and "
                              f"tool_calls_per_answer >= 1; got {self}")  # fmt: skip
        if self.memory_mb < 16 or self.output_chars < 20:
            raise ConfigError(f"rollout.tool_memory_mb must be >= 16 and tool_output_chars >= 20; got {self}")

    @classmethod
    def from_config(cls, cfg) -> ToolSettings:
        """From ``RolloutConfig``: validated once, with messages naming the key to change."""
        from reasoner.config import ConfigError

        if list(cfg.tools) != ["python"]:
            raise ConfigError(
                f"rollout.tools: the one tool is python (rollout.tools=[python]); got {cfg.tools}"
            )
        return cls(cfg.tool_format, cfg.max_turns, cfg.tool_timeout_s, cfg.tool_memory_mb,
                   cfg.tool_calls_per_answer, cfg.tool_seconds_per_answer, cfg.tool_output_chars)  # fmt: skip


def check_tools(cfg) -> None:
    """``RolloutConfig``'s tool settings, before anything slow runs."""
    from reasoner.config import ConfigError

    if cfg.tools:
        ToolSettings.from_config(cfg)
    elif cfg.max_turns != 1:
        raise ConfigError(
            f"rollout.max_turns={cfg.max_turns} needs a tool (rollout.tools=[python]), or set it to 1"
        )


@dataclass(frozen=True)
class CallResult:
    """What one call printed, as the sandbox reported it (``sandbox.Result`` fields the loop needs)."""

    status: str  # passed, failed, timeout, memory, error (the sandbox failed), budget (refused, never run)
    stdout: str
    stderr: str
    duration_s: float


# run(codes, timeouts_s, memory_mb) -> one CallResult per code, in order: every call of a turn in one batch
Executor = Callable[[list[str], list[float], int], list[CallResult]]


def sandbox_executor(codes: list[str], timeouts_s: list[float], memory_mb: int) -> list[CallResult]:
    """The project's sandbox (reasoner.rewards.code: the warm Docker pool, or the local backend), with its retries
    of sandbox failures; what still fails comes back with status ``error``."""
    from reasoner.rewards.code import run_jobs
    from sandbox import Job

    jobs = [Job(id=f"tool-{i}", program=code, timeout_s=t, memory_mb=memory_mb)
            for i, (code, t) in enumerate(zip(codes, timeouts_s, strict=True))]  # fmt: skip
    results, _ = run_jobs(jobs) if jobs else ([], 0)
    return [CallResult(r.status.value, r.stdout, r.stderr, r.duration_s) for r in results]


def format_output(result: CallResult, limit: int) -> str:
    """The text a call's result is shown as, inside ``<output>...</output>``: what it printed, then the error
    (the last line of the traceback), timeout or refusal in plain words; cut to ``limit`` characters.

    >>> format_output(CallResult("passed", "201954\\n", "", 0.01), 200)
    '201954\\n'
    >>> format_output(CallResult("failed", "", "Traceback ...\\nZeroDivisionError: division by zero\\n", 0.0), 200)
    'error: ZeroDivisionError: division by zero\\n'
    >>> format_output(CallResult("passed", "9" * 50, "", 0.0), 30)
    '9999\\n[... 47 more characters]\\n'
    """
    error = {
        "failed": f"error: {_last_line(result.stderr) or 'the program failed'}\n",
        "timeout": f"error: timed out after {result.duration_s:.0f} s and was stopped\n",
        "memory": "error: ran out of memory and was stopped\n",
        "error": "error: the sandbox failed to run this call\n",
        "budget": "error: no tool budget left in this answer; the call did not run\n",
    }.get(result.status, "")
    text = result.stdout
    if text and not text.endswith("\n"):
        text += "\n"
    if not text and not error:
        text = "(no output)\n"
    room = max(0, limit - len(error))
    if len(text) > room:  # the head of what it printed, then how much was cut, then the error
        keep = max(0, room - len(f"[... {len(text)} more characters]\n") - 1)
        text = text[:keep] + f"\n[... {len(text) - keep} more characters]\n"
    return text + error


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


@dataclass
class _Row:
    """One answer being built, turn by turn."""

    prompt_index: int
    prompt_ids: list[int]
    ids: list[int] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)
    logprobs: list[float] | None = None
    policy_text: list[str] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    seconds: float = 0.0
    finish: str = "length"
    stop_reason: str | None = None

    def add(self, ids: list[int], sampled: bool, logprobs: list[float] | None = None) -> None:
        self.ids += ids
        self.mask += [int(sampled)] * len(ids)
        if logprobs is not None or self.logprobs is not None:
            self.logprobs = (self.logprobs or [0.0] * (len(self.ids) - len(ids))) + (
                logprobs or [0.0] * len(ids)
            )


class ToolEngine:
    """An ``Engine`` whose answers may call the Python tool; see the module docstring."""

    def __init__(self, engine: Engine, tokenizer, settings: ToolSettings, executor: Executor | None = None):
        self.engine, self.tokenizer, self.settings = engine, tokenizer, settings
        self.format = FORMATS[settings.format]
        self.executor = executor or sandbox_executor

    def generate(self, prompts: list[str] | list[list[int]], params: SamplingParams) -> list[Rollout]:
        s, tok = self.settings, self.tokenizer
        budget = params.max_new_tokens  # the whole completion's, tool outputs included
        outs = self.engine.generate(prompts, replace(params, stop=self.format.stops))
        rows = [_Row(r.prompt_index, list(r.prompt_ids)) for r in outs]
        active = list(range(len(rows)))
        for turn in range(1, s.max_turns + 1):
            calls: list[tuple[int, str]] = []
            resume: list[int] = []
            for i, out in zip(active, outs, strict=True):
                row = rows[i]
                ids, logprobs = list(out.completion_ids), out.logprobs
                room = budget - len(row.ids)
                finish = out.finish_reason if len(ids) <= room else "length"
                ids = ids[:room]
                row.add(ids, sampled=True, logprobs=None if logprobs is None else list(logprobs[: len(ids)]))
                text = tok.decode(ids, skip_special_tokens=True)
                row.policy_text.append(text)
                row.finish, row.stop_reason = finish, out.stop_reason if finish == "stop" else None
                at_call = finish == "stop" and out.stop_reason is not None
                if not at_call or turn == s.max_turns or len(row.ids) >= budget:
                    continue  # EOS, out of tokens, or a call no turn follows: the answer is done
                code = self.format.code(text)
                if code is None:  # a stop string that closes no call (a bare ``` block): go on as if uncut
                    resume.append(i)
                else:
                    calls.append((i, code))
            for i, result in zip([i for i, _ in calls], self._run(rows, calls), strict=True):
                row = rows[i]
                row.statuses.append(result.status)
                row.seconds += result.duration_s
                out_ids = tok(OPEN + format_output(result, s.output_chars) + CLOSE, add_special_tokens=False)[
                    "input_ids"
                ]
                room = budget - len(row.ids)
                row.add(out_ids[:room], sampled=False)
                if len(out_ids) < room:  # no room left to answer: the row ends here
                    resume.append(i)
                else:
                    row.finish, row.stop_reason = "length", None
            active = sorted(resume)
            if not active or turn == s.max_turns:
                break
            seed = None if params.seed is None else _turn_seed(params.seed, turn)
            room = max(budget - len(rows[i].ids) for i in active)
            outs = self.engine.generate(
                [rows[i].prompt_ids + rows[i].ids for i in active],
                replace(params, n=1, max_new_tokens=room, seed=seed, stop=self.format.stops),
            )
            outs = [replace(o, prompt_index=rows[i].prompt_index) for i, o in zip(active, outs, strict=True)]
        return [self._rollout(row) for row in rows]

    def _run(self, rows: list[_Row], calls: list[tuple[int, str]]) -> list[CallResult]:
        """Every call of a turn in one sandbox batch; calls past their answer's budget are refused, not run."""
        s = self.settings
        run, results = [], [CallResult("budget", "", "", 0.0)] * len(calls)
        for k, (i, _) in enumerate(calls):
            left = s.seconds_per_answer - rows[i].seconds
            if len(rows[i].statuses) < s.calls_per_answer and left > 0:
                run.append(k)
        got = self.executor([calls[k][1] for k in run],
                            [min(s.timeout_s, s.seconds_per_answer - rows[calls[k][0]].seconds) for k in run],
                            s.memory_mb)  # fmt: skip
        if len(got) != len(run):
            raise RuntimeError(f"the tool executor returned {len(got)} results for {len(run)} calls")
        for k, result in zip(run, got, strict=True):
            results[k] = result
        return results

    def _rollout(self, row: _Row) -> Rollout:
        statuses = row.statuses
        trace = ToolTrace(
            statuses=list(statuses), answer="".join(row.policy_text), infra_error="error" in statuses
        )
        return Rollout(
            prompt_index=row.prompt_index,
            prompt_ids=row.prompt_ids,
            completion_ids=row.ids,
            text=self.tokenizer.decode(row.ids, skip_special_tokens=True),
            finish_reason=row.finish,  # type: ignore[arg-type]
            logprobs=row.logprobs,
            stop_reason=row.stop_reason,
            action_mask=row.mask,
            tools=trace,
        )

    def sync_weights(self, model) -> None:
        self.engine.sync_weights(model)

    def sleep(self) -> None:
        self.engine.sleep()

    def wake_up(self) -> None:
        self.engine.wake_up()


def tool_metrics(rollouts: list[Rollout], prefix: str = "tool/") -> dict[str, float]:
    """Per-answer tool statistics: calls per answer, the share of answers that call, and the share of calls
    whose program ran to its end (``passed``); sandbox failures and refused calls are counted apart.

    >>> r = Rollout(0, [1], [2], "", "stop", tools=ToolTrace(["passed", "failed"]))
    >>> tool_metrics([r, Rollout(0, [1], [2], "", "stop", tools=ToolTrace())])
    {'tool/calls_per_answer': 1.0, 'tool/answers_calling': 0.5, 'tool/success_rate': 0.5, 'tool/sandbox_errors': 0.0, 'tool/refused': 0.0}
    """
    statuses = [st for r in rollouts if r.tools is not None for st in r.tools.statuses]
    n = max(1, len(rollouts))
    return {
        f"{prefix}calls_per_answer": len(statuses) / n,
        f"{prefix}answers_calling": sum(bool(r.tools and r.tools.calls) for r in rollouts) / n,
        f"{prefix}success_rate": statuses.count("passed") / len(statuses) if statuses else 0.0,
        f"{prefix}sandbox_errors": float(statuses.count("error")),
        f"{prefix}refused": float(statuses.count("budget")),
    }


def _turn_seed(seed: int, turn: int) -> int:
    """A seed per turn, derived from the call's (a resumed turn must not replay the first turn's stream)."""
    return (
        int.from_bytes(hashlib.blake2b(f"{seed}:turn{turn}".encode(), digest_size=4).digest(), "little") >> 1
    )
