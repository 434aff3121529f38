"""What `make train-real` changed in SmolLM2-135M-Instruct: answers and answer statistics before and after.

    python benchmarks/train_real.py [--run runs/real-grpo] [--policy DIR] [--stats-prompts 50] [--samples 3]
        [--out benchmarks/results/train_real.json]

Reads the run's config and result (``<run>/config.json``, ``<run>/result.json``: the JSON line of `make
train-real`), then, for the model the run started from and the trained one (``<run>/final``, or ``--policy``,
e.g. a checkpoint's ``policy/`` of a run cut short):

- on the first ``--stats-prompts`` held-out problems, greedy as the run evaluates: accuracy, mean answer length
  in tokens, the fraction that hit ``rollout.max_new_tokens``, the fraction with a ``#### N`` line, and the
  fraction whose extracted answer is right among those that do end (what it learned: format, length, arithmetic);
- ``--samples`` answers sampled at the run's temperature to each of the first three held-out problems.

Writes them, with the run's result, to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from reasoner.config import load_config  # noqa: E402
from reasoner.models import load_policy, load_tokenizer  # noqa: E402
from reasoner.rewards.math import score_batch  # noqa: E402
from reasoner.rollout.base import SamplingParams  # noqa: E402
from reasoner.rollout.hf import HFEngine  # noqa: E402
from reasoner.tasks import load_examples  # noqa: E402
from reasoner.train.checkpoint import write_json_atomic  # noqa: E402
from reasoner.train.stream import prompt_renderer  # noqa: E402


def describe(path: str, cfg, examples, stats_prompts: int, samples: int) -> dict:
    tok, model = load_tokenizer(path), load_policy(path)
    engine, render = HFEngine(model, tok, batch_size=cfg.rollout.batch_size), prompt_renderer(tok, cfg)
    mnt = cfg.rollout.max_new_tokens
    chosen = examples[:stats_prompts]
    t0 = time.time()
    greedy = engine.generate(
        [render(ex) for ex in chosen], SamplingParams(n=1, temperature=0.0, max_new_tokens=mnt)
    )
    scores = score_batch([r.text for r in greedy], [ex.gold for ex in chosen])
    ended = [s for s, r in zip(scores, greedy, strict=True) if r.finish_reason == "stop"]
    stats = {
        "prompts": len(chosen),
        "accuracy": sum(scores) / len(chosen),
        "mean_tokens": sum(len(r.completion_ids) for r in greedy) / len(greedy),
        "truncated": sum(r.finish_reason == "length" for r in greedy) / len(greedy),
        "with_####": sum("####" in r.text for r in greedy) / len(greedy),
        "accuracy_when_ended": sum(ended) / len(ended) if ended else None,
        "wall_s": round(time.time() - t0, 1),
    }
    firsts = examples[:3]
    params = SamplingParams(n=samples, temperature=cfg.rollout.temperature, max_new_tokens=mnt, seed=0)
    sampled = engine.generate([render(ex) for ex in firsts], params)
    answers = [
        {
            "question": ex.prompt.strip(),
            "gold": ex.gold,
            "greedy": greedy[i].text if i < len(greedy) else None,
            "sampled": [r.text for r in sampled[i * samples : (i + 1) * samples]],
        }
        for i, ex in enumerate(firsts)
    ]
    return {"model": path, "greedy_stats": stats, "answers": answers}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default="runs/real-grpo")
    p.add_argument("--policy", default=None, help="the trained model (default: <run>/final)")
    p.add_argument("--stats-prompts", type=int, default=50)
    p.add_argument("--samples", type=int, default=3)
    p.add_argument("--out", default="benchmarks/results/train_real.json")
    args = p.parse_args()
    run = Path(args.run)
    cfg = load_config(None)
    saved = json.loads((run / "config.json").read_text())
    cfg = load_config(None, [f"{s}.{k}={json.dumps(v)}" for s in ("model", "task", "rollout") for k, v in
                             saved[s].items() if not isinstance(v, dict) and v is not None])  # fmt: skip
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    examples = load_examples(cfg.task, "test", saved["train"]["seed"])
    result = json.loads((run / "result.json").read_text()) if (run / "result.json").is_file() else None
    policy = args.policy or str(run / "final")
    report = {
        "result": result,
        "load_average": os.getloadavg(),
        "before": describe(cfg.model.path, cfg, examples, args.stats_prompts, args.samples),
        "after": describe(policy, cfg, examples, args.stats_prompts, args.samples),
    }
    write_json_atomic(Path(args.out), report)
    print(json.dumps({k: report[k]["greedy_stats"] for k in ("before", "after")}))


if __name__ == "__main__":
    main()
