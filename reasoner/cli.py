"""`reasoner train | sft | eval | rm | rlhf | serve | feedback | online | tiny-model | convert-gguf`: the command line.

Training commands take ``--config FILE.yaml`` and any number of ``key.sub=value`` overrides, e.g.
``reasoner train --config configs/math.yaml algo.beta=0.0 train.steps=50``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from reasoner.config import ConfigError, load_config
from reasoner.data import DataError
from reasoner.rewards.user import RewardError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="reasoner", description=__doc__.split("\n")[0].strip("`: "))
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "train", help="RL training (GRPO or PPO) on a task; ends with one JSON line of results"
    )
    _config_args(p)
    p.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    p = sub.add_parser("sft", help="supervised fine-tuning on a task's reference solutions")
    _config_args(p)
    p = sub.add_parser("eval", help="benchmark a model or a completions file: accuracy / pass@k")
    from reasoner.evaluate import add_eval_arguments

    add_eval_arguments(p)
    p = sub.add_parser("rm", help="reward models: train (Bradley–Terry on preference pairs) | eval")
    rm_sub = p.add_subparsers(dest="rm_command", required=True, metavar="SUBCOMMAND")
    q = rm_sub.add_parser("train", help="train a reward model; ends with one JSON line (accuracy, model)")
    q.add_argument("--model", required=True, help="causal LM or reward model to start from (dir or hub id)")
    q.add_argument("--data", required=True, help="preference pairs: .jsonl/.json/.parquet or a hub id")
    q.add_argument("--eval-data", help="held-out preference pairs (accuracy is reported on them)")
    q.add_argument("--out", required=True, help="run directory; the model is saved to OUT/final")
    _config_args(q)
    q = rm_sub.add_parser("eval", help="pairwise accuracy of a reward model on preference pairs")
    q.add_argument("--model", required=True, help="a directory written by `reasoner rm train`")
    q.add_argument("--data", required=True, help="preference pairs: .jsonl/.json/.parquet or a hub id")
    q.add_argument("--out", required=True, help="JSON report to write")
    _config_args(q)
    p = sub.add_parser("rlhf", help="offline RLHF demo: SFT, preference pairs, reward model, GRPO; JSON line")
    _config_args(p)
    p = sub.add_parser(
        "tiny-model", help="build the offline character-level policy (Llama-shaped, ~1M parameters)"
    )
    p.add_argument("--out", required=True, help="directory to write the model and tokenizer to")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser(
        "convert-gguf", help="a GGUF file -> a plain checkpoint directory (weights, tokenizer, chat template)"
    )
    p.add_argument("gguf", metavar="FILE.gguf", help="any GGUF file transformers can read (needs `gguf`)")
    p.add_argument("--out", required=True, help="directory to write (kept as is if already converted)")

    from reasoner.serve.cli import add_feedback_arguments, add_serve_arguments

    add_serve_arguments(
        sub.add_parser("serve", help="serve the policy (OpenAI-compatible API, feedback, web page)")
    )
    add_feedback_arguments(
        sub.add_parser("feedback", help="the feedback store: export preference pairs, stats")
    )

    p = sub.add_parser(
        "online",
        help="the online loop: serve, collect feedback, RM update, RL round, gate, canary, deploy; resumable. "
        "`reasoner online rollback VERSION --config FILE` rolls a version back by hand",
    )
    _config_args(p)

    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ConfigError as e:
        print(f"reasoner {args.command}: config error: {e}", file=sys.stderr)
        return 2
    except DataError as e:
        print(f"reasoner {args.command}: data error: {e}", file=sys.stderr)
        return 2
    except RewardError as e:  # a user reward function failed: its name, the example and its traceback
        print(f"reasoner {args.command}: {e}", file=sys.stderr)
        return 1


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file (see configs/)")
    p.add_argument(
        "overrides", nargs="*", metavar="key.sub=value", help="override config values, e.g. algo.beta=0.0"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")


def _train(args) -> int:
    from reasoner.train.trainer import train

    cfg = load_config(args.config, args.overrides + (["train.resume=true"] if args.resume else []))
    return _run_to_json_line(train, cfg, args)


def _sft(args) -> int:
    from reasoner.train.sft import run_sft

    cfg = load_config(args.config, args.overrides)
    out = run_sft(cfg, cfg.model.path, cfg.sft.output_dir, progress=not args.no_progress)
    print(json.dumps({"model": str(out)}))
    return 0


def _eval(args) -> int:
    from reasoner.evaluate import run_eval

    return run_eval(args)


def _rm(args) -> int:
    from reasoner.data import DataError

    cfg = load_config(args.config, args.overrides)
    try:
        if args.rm_command == "train":
            from reasoner.rlhf.rm_training import train_reward_model

            try:
                result = train_reward_model(
                    cfg, args.model, args.data, args.eval_data, args.out, not args.no_progress
                )
            except KeyboardInterrupt:
                return 130
            print(json.dumps(result))
            return 0
        from pathlib import Path

        from reasoner.rlhf.rm_training import evaluate_reward_model
        from reasoner.train.checkpoint import write_json_atomic

        report = evaluate_reward_model(args.model, args.data, cfg)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(Path(args.out), report)
        print(report["markdown"])
        print(json.dumps({k: v for k, v in report.items() if k not in ("records", "markdown")}))
        return 0
    except DataError as e:
        print(f"reasoner rm {args.rm_command}: data error: {e}", file=sys.stderr)
        return 2


def _rlhf(args) -> int:
    from reasoner.rlhf.demo import run_rlhf

    return _run_to_json_line(run_rlhf, load_config(args.config, args.overrides), args)


def _run_to_json_line(run, cfg, args) -> int:
    """Run a long job that ends with one JSON line; Ctrl-C/SIGTERM exits 130 once it has saved its state."""
    try:
        result = run(cfg, progress=not args.no_progress)
    except KeyboardInterrupt:
        return 130
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one result line
        print(json.dumps(result))
    return 0


def _tiny_model(args) -> int:
    from reasoner.models import build_tiny_model, count_parameters, load_policy

    out = build_tiny_model(args.out, seed=args.seed)
    n = count_parameters(load_policy(str(out), "float32"))
    print(json.dumps({"model": str(out), "parameters": n}))
    return 0


def _convert_gguf(args) -> int:
    import torch

    from reasoner.models import convert_gguf, count_parameters, load_policy

    try:
        out = convert_gguf(args.gguf, args.out)
    except (FileNotFoundError, ImportError, ValueError) as e:
        print(f"reasoner convert-gguf: {e}", file=sys.stderr)
        return 2
    n = count_parameters(load_policy(str(out), "float32", torch.device("cpu")))
    print(json.dumps({"model": str(out), "parameters": n}))
    return 0


def _serve(args) -> int:
    from reasoner.serve.cli import run_serve

    return run_serve(args)


def _feedback(args) -> int:
    from reasoner.serve.cli import run_feedback

    return run_feedback(args)


def _online(args) -> int:
    from reasoner.online.loop import rollback_by_hand, run_online

    if args.overrides[:1] == ["rollback"]:  # reasoner online rollback VERSION [--config FILE] [key=value ...]
        if len(args.overrides) < 2 or "=" in args.overrides[1]:
            raise ConfigError("usage: reasoner online rollback VERSION [--config FILE] [key=value ...]")
        cfg = load_config(args.config, args.overrides[2:])
        print(json.dumps(rollback_by_hand(cfg, args.overrides[1])))
        return 0
    return _run_to_json_line(run_online, load_config(args.config, args.overrides), args)


COMMANDS = {
    "train": _train,
    "sft": _sft,
    "eval": _eval,
    "tiny-model": _tiny_model,
    "convert-gguf": _convert_gguf,
    "rm": _rm,
    "rlhf": _rlhf,
    "serve": _serve,
    "feedback": _feedback,
    "online": _online,
}

if __name__ == "__main__":
    raise SystemExit(main())
