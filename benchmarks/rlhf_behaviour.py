"""What an RLHF run taught, per kind of prompt: sampled answers of each policy to held-out preference prompts.

    python benchmarks/rlhf_behaviour.py runs/rlhf-sft runs/rlhf/grpo/final [--prompts 500] [--seed 0]
        [--rule helpful-formal] [--out runs/rlhf/behaviour.json]

For each policy (a directory ``from_pretrained`` loads) and each kind of prompt (sums, harmful requests, benign
requests): the share of answers in a formal tone, the gold score, the share of sums stated right, the share of
requests refused, helped (no refusal, a step that helps: the topic's own or a shared one), and helped with the
topic's own step. The gold score alone says how much a policy improved; this says on what (``make train-rlhf``'s
README figures). Answers are sampled at temperature 1, as the demo's held-out gold score is.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reasoner.rlhf.demo import sample_answers  # noqa: E402
from reasoner.tasks.preference import (  # noqa: E402
    STEPS,
    gives_help,
    gold_score,
    is_formal,
    is_refusal,
    load,
    parse_prompt,
    stated_number,
)
from reasoner.train.checkpoint import write_json_atomic  # noqa: E402

KINDS = ("sum", "harmful", "benign")


def kind_of(p: dict) -> str:
    """``sum``, ``harmful`` or ``benign`` for a parsed prompt (``parse_prompt``)."""
    return "sum" if p["kind"] == "sum" else "harmful" if p["harmful"] else "benign"


def behaviour(prompts: list[str], answers: list[str], rule: str) -> dict[str, dict]:
    """Per kind of prompt: ``prompts`` (count) and shares of ``formal``, ``gold``, and ``right`` (sums) or
    ``refuses`` / ``helps`` / ``own_step`` (requests), rounded to 3 places."""
    rows: dict[str, list[dict]] = {k: [] for k in KINDS}
    for prompt, answer in zip(prompts, answers, strict=True):
        p = parse_prompt(prompt)
        kind = kind_of(p)
        row = {"formal": is_formal(answer), "gold": gold_score(rule, prompt, answer)}
        if kind == "sum":
            row["right"] = stated_number(answer) == p["a"] + p["b"]
        else:
            row["refuses"] = is_refusal(answer)
            row["helps"] = not row["refuses"] and gives_help(p["topic"], answer)
            row["own_step"] = STEPS[p["topic"]] in answer.lower()
        rows[kind].append(row)
    return {kind: {"prompts": len(rs), **{key: round(sum(float(r[key]) for r in rs) / len(rs), 3) for key in rs[0]}}
            for kind, rs in rows.items() if rs}  # fmt: skip


def markdown(report: dict[str, dict]) -> str:
    lines = ["| policy | kind | prompts | formal | gold | right sum | refuses | helps | own step |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for policy, kinds in report.items():
        for kind, r in kinds.items():
            cells = [
                r.get(k, "") for k in ("prompts", "formal", "gold", "right", "refuses", "helps", "own_step")
            ]
            lines.append(f"| {policy} | {kind} | " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "policies", nargs="+", help="policy directories (e.g. runs/rlhf-sft runs/rlhf/grpo/final)"
    )
    ap.add_argument("--prompts", type=int, default=500, help="held-out preference prompts (test split)")
    ap.add_argument("--seed", type=int, default=0, help="which held-out prompts, and the sampling seed")
    ap.add_argument(
        "--rule", default="helpful-formal", help="the gold rule (reasoner.tasks.preference.RULES)"
    )
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--out", type=Path, default=None, help="write the report here as JSON")
    args = ap.parse_args(argv)
    for policy in args.policies:
        if not (Path(policy) / "config.json").is_file():
            sys.exit(
                f"rlhf_behaviour: {policy!r} is not a saved model (no config.json); pass e.g. runs/rlhf-sft"
            )
    prompts = [ex.prompt for ex in load(args.rule, None, "test", args.prompts, args.seed)]
    report = {policy: behaviour(prompts, sample_answers(policy, prompts, 1, 1.0, args.max_new_tokens, args.seed), args.rule)
              for policy in args.policies}  # fmt: skip
    print(markdown(report))
    if args.out:
        write_json_atomic(args.out, {"prompts": args.prompts, "seed": args.seed, "rule": args.rule, **report})
    return report


if __name__ == "__main__":
    main()
