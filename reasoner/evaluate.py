"""Benchmark runs: score completions of a task's examples and report accuracy (math) or pass@k (code).

One scorer for every source of completions: a model (``evaluate_model``, also used for evaluation during
training), a completions file, or the dataset's own reference solutions (``--completions canonical``, the
check that the scorer itself is right). Scores come from the task's registered reward, the same function
training uses.

Completions file (``--completions FILE.jsonl``): one JSON object per line, naming its example by
``task_id`` (the dataset's id, e.g. ``"HumanEval/0"``) or by ``index`` (0-based row of the data file), and
giving ``completion`` (one string) or ``completions`` (a list); several lines per example are allowed and
add up::

    {"task_id": "HumanEval/0", "completion": "    return any(...)\\n"}
    {"index": 12, "completions": ["... #### 42", "... #### 41"]}

A completion is what the model wrote after the prompt (for code: a fenced ```python block, or the
function body that continues a HumanEval prompt). Every evaluated example needs at least one completion.

Metrics: math tasks report ``accuracy`` (mean over examples of the fraction of correct samples) and
``extracted`` (fraction of completions with a final answer the checker could find); code tasks report the
unbiased ``pass@k`` (Chen et al. 2021) for each requested k; tasks scored by any reward (``kind="reward"``, the
generic ``dataset`` task) report ``mean_reward`` (the mean over examples of their samples' mean score, the
held-out score of a training run) and ``accuracy`` (samples scoring at least 1). Samples the reward could not
score (``None``: e.g. the sandbox itself failed after retries) are left out of the counts and reported as
``unscored``.

>>> report = EvalReport(task="toy", n=2, metrics={"pass@1": 0.75}, records=[])
>>> print(report.to_markdown())
| task | examples | samples/example | pass@1 |
|---|---|---|---|
| toy | 0 | 2 | 75.00% |
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from reasoner.algo.passk import mean_pass_at_k
from reasoner.data import DataError
from reasoner.tasks.base import Example, Task

EVAL_TASKS = (
    "gsm8k",
    "math",
    "humaneval",
    "mbpp",
    "arithmetic",
    "arithmetic-easy",
    "products",
    "codegen",
    "dataset",
)
COUNT_KEYS = ("examples", "samples", "correct", "unscored")  # integer metrics, printed as counts
SCORE_CHUNK = 256  # completions per reward call: bounds memory, drives the progress bar
SCORE_METRIC = {"math": "accuracy", "code": "pass@1", "reward": "mean_reward"}  # a task kind's headline score


@dataclass
class EvalReport:
    """``metrics``: math ``accuracy`` and ``extracted``, code ``pass@k``; both the counts ``examples``,
    ``samples``, ``correct`` and ``unscored``. ``records``: per example its id, prompt, gold, completions,
    scores, ``n`` (scored samples) and ``correct``."""

    task: str
    n: int  # samples per example (the smallest count, when a completions file gives varying counts)
    metrics: dict[str, float]
    records: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"task": self.task, "n": self.n, "metrics": self.metrics, "records": self.records}

    def to_markdown(self) -> str:
        shown = {k: v for k, v in self.metrics.items() if k not in COUNT_KEYS}
        if self.metrics.get("unscored"):
            shown["unscored"] = self.metrics["unscored"]
        head = ["task", "examples", "samples/example", *shown]
        cells = [self.task, str(len(self.records)), str(self.n)]
        cells += [f"{int(v)}" if k == "unscored" else f"{v:.2f}" if k.endswith("per_answer") else f"{100 * v:.2f}%"
                  for k, v in shown.items()]  # fmt: skip
        return "\n".join(
            ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), "| " + " | ".join(cells) + " |"]
        )


def score_completions(
    task: Task,
    examples: Sequence[Example],
    completions: Sequence[Sequence[str]],
    *,
    k_values: Sequence[int] = (1,),
    progress: bool = False,
    reward: Callable | None = None,
    unscorable: Sequence[Sequence[bool]] | None = None,
    **reward_kwargs,
) -> EvalReport:
    """Score ``completions[i]`` (the samples of ``examples[i]``) with the task's reward and build the report.

    ``reward``: the reward function; None = the task's registered reward. ``reward_kwargs`` go to the reward
    function (e.g. ``partial=True`` for the code reward). ``unscorable[i][j]``: sample j of example i cannot be
    scored (its tool call hit a sandbox failure) whatever the reward says.
    """
    from reasoner.rewards import get_reward

    if len(completions) != len(examples):
        raise ValueError(
            f"score_completions: {len(completions)} completion lists for {len(examples)} examples"
        )
    if not examples:
        raise ValueError("score_completions: no examples to score")
    counts = [len(c) for c in completions]
    _check_k(k_values, min(counts))
    reward = reward or get_reward(task.reward)
    flat = [(i, text) for i, group in enumerate(completions) for text in group]
    scores: list[float | None] = []
    bar = _progress(total=len(flat), desc=f"scoring {task.name}", enabled=progress)
    for start in range(0, len(flat), SCORE_CHUNK):
        chunk = flat[start : start + SCORE_CHUNK]
        out = reward([text for _, text in chunk], [examples[i] for i, _ in chunk], **reward_kwargs)
        if len(out.scores) != len(chunk):
            raise RuntimeError(
                f"reward {getattr(reward, '__name__', task.reward)!r} returned {len(out.scores)} scores for "
                f"{len(chunk)} completions"
            )
        scores += out.scores
        bar.update(len(chunk))
    if unscorable is not None:
        flags = [bad for group in unscorable for bad in group]
        scores = [None if bad else s for s, bad in zip(scores, flags, strict=True)]
    bar.close()

    records, pos = [], 0
    for i, ex in enumerate(examples):
        group = scores[pos : pos + counts[i]]
        pos += counts[i]
        scored = [s for s in group if s is not None]
        records.append(
            {
                **_identity(ex, i),
                "prompt": ex.prompt,
                "gold": ex.gold,
                "completions": list(completions[i]),
                "scores": group,
                "n": len(scored),
                "correct": sum(1 for s in scored if s >= 1.0),
            }
        )
    metrics = _metrics(task, records, k_values)
    return EvalReport(task=task.name, n=min(counts), metrics=metrics, records=records)


def evaluate_model(
    engine,
    task: Task,
    examples: Sequence[Example],
    *,
    n: int = 1,
    temperature: float = 0.0,
    top_p: float = 1.0,
    max_new_tokens: int = 256,
    k_values: Sequence[int] = (1,),
    seed: int = 0,
    render: Callable[[Example], str] = lambda ex: ex.prompt,
    progress: bool = True,
    batch_prompts: int = 64,
    reward: Callable | None = None,
) -> EvalReport:
    """Generate ``n`` completions per example with ``engine`` (greedy when ``temperature == 0``) and score them.

    With a tool engine (reasoner.rollout.tools) the reward scores the policy's own text, each record keeps the
    whole ``transcripts`` (tool outputs included), and the metrics add ``tool_calls_per_answer`` and
    ``tool_success_rate``."""
    from reasoner.rollout.base import SamplingParams, reward_text
    from reasoner.rollout.tools import tool_metrics

    if n > 1 and temperature == 0:
        raise ValueError(
            f"n={n} samples per example with greedy decoding (temperature 0) are all the same; set temperature > 0"
        )
    _check_k(k_values, n)
    completions: list[list[str]] = []
    transcripts: list[list[str]] = []
    unscorable: list[list[bool]] = []
    every = []
    bar = _progress(total=len(examples), desc=f"generating {task.name}", enabled=progress)
    for chunk_no, start in enumerate(range(0, len(examples), batch_prompts)):
        chunk = examples[start : start + batch_prompts]
        params = SamplingParams(
            n=n, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed + chunk_no
        )
        rollouts = engine.generate([render(ex) for ex in chunk], params)
        groups: list[list[str]] = [[] for _ in chunk]
        whole: list[list[str]] = [[] for _ in chunk]
        bad: list[list[bool]] = [[] for _ in chunk]
        for r in rollouts:
            groups[r.prompt_index].append(reward_text(r))
            whole[r.prompt_index].append(r.text)
            bad[r.prompt_index].append(r.tools is not None and r.tools.infra_error)
        completions += groups
        transcripts += whole
        unscorable += bad
        every += rollouts
        bar.update(len(chunk))
    bar.close()
    report = score_completions(task, examples, completions, k_values=k_values, progress=progress, reward=reward,
                               unscorable=unscorable)  # fmt: skip
    if any(r.tools is not None for r in every):
        tools = tool_metrics(every, prefix="")
        report.metrics |= {"tool_calls_per_answer": tools["calls_per_answer"],
                           "tool_success_rate": tools["success_rate"]}  # fmt: skip
        for record, whole in zip(report.records, transcripts, strict=True):
            record["transcripts"] = whole
    return report


def _check_k(k_values: Sequence[int], n: int) -> None:
    for k in k_values:
        if k < 1:
            raise ValueError(f"pass@k needs k >= 1, got k={k}")
        if k > n:
            raise ValueError(
                f"pass@{k} needs at least {k} completions per example, but some have {n}: lower k or raise n"
            )


def _identity(ex: Example, i: int) -> dict:
    ids = {key: ex.meta[key] for key in ("task_id", "index") if key in ex.meta}
    return ids or {"index": i}


def _metrics(task: Task, records: list[dict], k_values: Sequence[int]) -> dict[str, float]:
    samples = sum(len(r["scores"]) for r in records)
    scored = [r for r in records if r["n"] > 0]
    metrics: dict[str, float] = {}
    if task.kind == "math":
        metrics["accuracy"] = sum(r["correct"] / r["n"] for r in scored) / len(scored) if scored else 0.0
        metrics["extracted"] = _extracted_fraction(records)
        k_values = [k for k in k_values if k > 1]
    if task.kind == "reward":
        means = [sum(s for s in r["scores"] if s is not None) / r["n"] for r in scored]
        metrics["mean_reward"] = sum(means) / len(means) if means else 0.0
        metrics["accuracy"] = sum(r["correct"] / r["n"] for r in scored) / len(scored) if scored else 0.0
        k_values = []
    for k in k_values:
        usable = [(r["n"], r["correct"]) for r in records if r["n"] >= k]
        if usable:  # problems with fewer than k scored samples (sandbox failures) cannot give pass@k
            metrics[f"pass@{k}"] = mean_pass_at_k(usable, k)
    metrics["examples"] = len(records)
    metrics["samples"] = samples
    metrics["correct"] = sum(r["correct"] for r in records)
    metrics["unscored"] = samples - sum(r["n"] for r in records)
    return metrics


def _extracted_fraction(records: list[dict]) -> float:
    from reasoner.rewards.math import extract_answer

    texts = [t for r in records for t in r["completions"]]
    return sum(extract_answer(t) is not None for t in texts) / len(texts) if texts else 0.0


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True)


# ---------------------------------------------------------------------------------------------- the CLI


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    p = parser
    p.add_argument("--task", required=True, choices=EVAL_TASKS)
    p.add_argument(
        "--data",
        default=None,
        help="local .jsonl/.json/.jsonl.gz/.parquet file or hub id (default: the task's own)",
    )
    p.add_argument("--split", default="test", help="hub split (ignored for local files)")
    p.add_argument(
        "--prompt",
        default=None,
        help="a template over the row's fields ('Solve: {problem}') or the field holding the prompt (string or "
        "chat messages); --task dataset: default 'prompt' (as task.prompt)",
    )
    p.add_argument(
        "--answer", default=None, help="--task dataset: the gold answer's field, a.b for nested keys"
    )
    p.add_argument(
        "--reward",
        default=None,
        help="score with this reward instead of the task's: a registered name or path/to/file.py:function "
        "(as task.reward; --task dataset's default is math, against --answer)",
    )
    p.add_argument("--reward-workers", type=int, default=0, help="processes for a --reward function of yours")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="local model directory or hub id to generate completions with")
    src.add_argument(
        "--completions",
        help="JSONL file of completions (see reasoner.evaluate), or 'canonical' for the dataset's references",
    )
    p.add_argument(
        "--out", required=True, help="report JSON path; a markdown table is written next to it (.md)"
    )
    p.add_argument("--n", type=int, default=1, help="samples per example (--model)")
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N examples only")
    p.add_argument(
        "--k", default=None, help="comma-separated k for pass@k, e.g. 1,10 (default: 1, 10, 100 up to --n)"
    )
    p.add_argument("--temperature", type=float, default=None, help="default 0 (greedy) for --n 1, else 0.8")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=64, help="sequences per generate() call")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument(
        "--chat-template", action="store_true", help="wrap prompts in the tokenizer's chat template"
    )
    p.add_argument("--system-prompt", default=None, help="system message when --chat-template is on")
    p.add_argument(
        "--backend",
        default=os.environ.get("REASONER_SANDBOX_BACKEND", "docker"),
        choices=["docker", "local"],
        help="sandbox for code tasks (local = subprocess on this machine, no isolation)",
    )
    p.add_argument("--workers", type=int, default=int(os.environ.get("REASONER_SANDBOX_WORKERS", "4")))
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per program (code tasks)")
    p.add_argument(
        "--tools",
        nargs="+",
        default=[],
        choices=["python"],
        help="tools the model may call mid-answer (--model): its calls run in the sandbox (--backend) and their "
        "output is appended before it goes on (reasoner.rollout.tools); needs --max-turns >= 2",
    )
    p.add_argument("--max-turns", type=int, default=1, help="generation turns per answer with --tools")
    p.add_argument(
        "--tool-format",
        default=None,
        choices=["tag", "fence"],
        help="how the model writes a call: <python>...</python> (tag) or a ```python block (fence); "
        "default: fence with --chat-template, else tag",
    )
    p.add_argument("--no-progress", action="store_true")


def run_eval(args: argparse.Namespace) -> int:
    from reasoner.config import TaskConfig
    from reasoner.rewards import get_reward
    from reasoner.rewards.code import configure_sandbox
    from reasoner.tasks import get_task, load_examples

    task = get_task(args.task)
    # the run's task section, as `reasoner train` would read it: --prompt / --answer / --reward mean what
    # task.prompt / task.answer / task.reward mean there, and fail with the same messages
    task_cfg = TaskConfig(name=args.task, test=args.data, test_split=args.split, eval_size=None,
                          prompt=args.prompt, answer=args.answer, reward=args.reward)  # fmt: skip
    if task.from_fields and (args.data is None or (args.answer is None and args.reward is None)):
        raise DataError(
            "--task dataset evaluates your data: give --data FILE_OR_HUB_ID, and --answer FIELD (the gold answer, "
            "scored by the math checker) or --reward path/to/file.py:function (your own scoring)"
        )
    examples = load_examples(task_cfg, "test", args.seed)
    reward = None if args.reward is None else get_reward(args.reward, args.reward_workers)
    if args.limit is not None:
        examples = examples[: args.limit]
    if not examples:
        raise DataError(f"{args.data or task.name}: no examples to evaluate")
    if args.tools and args.model is None:
        raise DataError(
            "--tools runs the model's tool calls while it generates: it needs --model, not --completions"
        )
    if bool(args.tools) != (args.max_turns > 1):
        raise DataError(
            f"--tools python needs --max-turns >= 2 (a turn after each call), and --max-turns > 1 needs "
            f"--tools python; got --tools {' '.join(args.tools) or '(none)'} --max-turns {args.max_turns}"
        )
    if task.kind == "code" or args.tools:
        configure_sandbox(backend=args.backend, workers=args.workers, timeout_s=args.timeout)
    progress = not args.no_progress

    if args.model is not None:
        report = _eval_model(args, task, examples, progress, reward)
    else:
        if args.completions == "canonical":
            completions = canonical_completions(examples, task.name)
        else:
            completions = read_completions(args.completions, examples, strict=args.limit is None)
        k_values = _k_values(args.k, min(len(c) for c in completions))
        report = score_completions(
            task, examples, completions, k_values=k_values, progress=progress, reward=reward
        )

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report.to_json(), indent=1) + "\n")
    table = report.to_markdown()
    out.with_suffix(".md").write_text(table + "\n")
    print(table)
    print(f"report: {out}  table: {out.with_suffix('.md')}")
    if report.metrics["unscored"]:
        print(
            f"error: {int(report.metrics['unscored'])} samples could not be scored (sandbox failures, see the "
            "records' null scores); the metrics leave them out"
        )
        return 1
    return 0


def _eval_model(
    args: argparse.Namespace, task: Task, examples: list[Example], progress: bool, reward: Callable | None
) -> EvalReport:
    from reasoner.models import load_policy, load_tokenizer
    from reasoner.rollout.hf import HFEngine
    from reasoner.train.stream import chat_renderer

    temperature = args.temperature if args.temperature is not None else (0.0 if args.n == 1 else 0.8)
    tok = load_tokenizer(args.model)
    model = load_policy(args.model, dtype=args.dtype)
    engine = HFEngine(model, tok, batch_size=args.batch_size)
    if args.tools:
        from reasoner.config import RolloutConfig
        from reasoner.rollout.tools import ToolEngine, ToolSettings

        fmt = args.tool_format or ("fence" if args.chat_template else "tag")
        rollout = RolloutConfig(tools=list(args.tools), max_turns=args.max_turns, tool_format=fmt)
        engine = ToolEngine(engine, tok, ToolSettings.from_config(rollout))
    render = chat_renderer(tok, args.system_prompt, args.chat_template, args.model, "--chat-template")
    return evaluate_model(
        engine,
        task,
        examples,
        n=args.n,
        temperature=temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        k_values=_k_values(args.k, args.n),
        seed=args.seed,
        render=render,
        progress=progress,
        batch_prompts=max(1, args.batch_size // args.n),
        reward=reward,
    )


def _k_values(spec: str | None, n: int) -> tuple[int, ...]:
    """``--k`` parsed; by default 1, 10 and 100 as far as ``n`` samples allow.

    >>> _k_values(None, 20), _k_values("1,5", 5)
    ((1, 10), (1, 5))
    """
    if spec is None:
        return tuple(k for k in (1, 10, 100) if k <= n)
    try:
        ks = tuple(int(k) for k in spec.split(","))
    except ValueError:
        raise ValueError(f"--k must be comma-separated integers like 1,10, got {spec!r}") from None
    _check_k(ks, n)
    return ks


def canonical_completions(examples: Sequence[Example], task_name: str) -> list[list[str]]:
    """The dataset's reference solution of each example as its one completion."""
    missing = [i for i, ex in enumerate(examples) if ex.solution is None]
    if missing:
        raise DataError(
            f"task {task_name!r}: {len(missing)} examples have no reference solution (first: row {missing[0]})"
        )
    return [[ex.solution] for ex in examples]


def read_completions(path: str | Path, examples: Sequence[Example], strict: bool = True) -> list[list[str]]:
    """Completions of each example from a JSONL file (format in the module docstring).

    ``strict``: a line naming an example that is not in ``examples`` is an error (else skipped: --limit).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"completions file {str(path)!r} not found (give a .jsonl file, or 'canonical')")
    by_id = {ex.meta["task_id"]: i for i, ex in enumerate(examples) if "task_id" in ex.meta}
    by_index = {ex.meta.get("index", i): i for i, ex in enumerate(examples)}
    out: list[list[str]] = [[] for _ in examples]
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"completions file {str(path)!r} could not be read: {e}") from e
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{no}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: not a JSON object ({e.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
        texts = row.get("completions", [row["completion"]] if "completion" in row else None)
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise DataError(f"{where}: needs 'completion' (a string) or 'completions' (a list of strings)")
        if "task_id" in row:
            key, table = row["task_id"], by_id
        elif "index" in row:
            key, table = row["index"], by_index
            if not isinstance(key, int) or isinstance(key, bool):
                raise DataError(f"{where}: 'index' must be an integer row number, got {key!r}")
        else:
            raise DataError(f"{where}: needs 'task_id' or 'index' to name its example")
        if key in table:
            out[table[key]] += texts
        elif strict:
            raise DataError(
                f"{where}: no example with {'task_id' if table is by_id else 'index'} {key!r} in the data"
            )
    empty = [i for i, texts in enumerate(out) if not texts]
    if empty:
        first = _identity(examples[empty[0]], empty[0])
        raise DataError(
            f"{path}: {len(empty)} of {len(examples)} examples have no completion (first: {first}); "
            "complete the file or evaluate fewer examples with --limit"
        )
    return out
