"""The online loop's records, rebuilt from the store at every stage: versions.jsonl, TensorBoard, the
satisfaction plot and the JSON result (``make online``'s last line). Reads only; idempotent."""

from __future__ import annotations

import json
import shutil
from pathlib import Path


def satisfaction(loop) -> dict[str, float | None]:
    """Each version's thumbs-up rate over every thumb it got (None: never rated)."""
    thumbs = loop.store.thumbs()
    out = {}
    for v in loop.store.versions():
        up, n = thumbs.get(v["name"], (0, 0))
        out[v["name"]] = up / n if n else None
    return out


def version_rows(loop) -> list[dict]:
    """One row per version: its satisfaction and what made it (round, RM accuracy, gate metrics, decision)."""
    sat, rows = satisfaction(loop), []
    for i, v in enumerate(loop.store.versions()):
        row = {"step": i, "version": v["name"], "parent": v["parent"], "satisfaction": sat[v["name"]]}
        r = v["meta"].get("round")
        if r is not None:
            rm, gate = loop.state(f"round/{r}/rm") or {}, loop.state(f"round/{r}/gate") or {}
            row |= {"round": r, "rm_accuracy": rm.get("accuracy"), "judge_accuracy": rm.get("judge_accuracy"),
                    "win_rate": gate.get("win_rate"), "kl": gate.get("kl"), "rm_score": gate.get("score_candidate"),
                    "decision": (loop.state(f"round/{r}/canary") or {}).get("decision")}  # fmt: skip
        rows.append(row)
    return rows


def write_metrics(loop) -> None:
    """Rebuild versions.jsonl, TensorBoard and the PNG from the recorded state (idempotent)."""
    from reasoner.train.metrics import MetricsLogger

    rows = version_rows(loop)
    log = MetricsLogger(loop.run_dir, loop.cfg.train.tensorboard)
    for row in rows:
        log.log(row["step"], {k: v for k, v in row.items() if k != "step" and v is not None})
    log.close()
    shutil.copy(loop.run_dir / "metrics.jsonl", loop.run_dir / "versions.jsonl")
    plot_satisfaction(rows, shift_version(loop), loop.run_dir / "satisfaction.png")


def shift_version(loop) -> int | None:
    """Index of the first version the users judged after their preference shifted (simulate only)."""
    if not (loop.oc.simulate and loop.oc.shift_after_round):
        return None
    collect = loop.state(f"round/{loop.oc.shift_after_round + 1}/collect")
    if collect is None:
        return None
    names = [v["name"] for v in loop.store.versions()]
    return names.index(collect["version"])


def round_rows(loop) -> list[dict]:
    """Per round: the RM, the gate, and the contract's ``candidate``, ``decision`` and ``live`` (when a canary
    ran: both thumbs-up rates and thumbs counts)."""
    rounds = []
    for r in range(1, loop.oc.rounds + 1):
        rm, gate, canary, dep = (
            loop.state(f"round/{r}/{s}") or {} for s in ("rm", "gate", "canary", "deploy")
        )
        row = {"round": r, "candidate": canary.get("candidate"), "decision": canary.get("decision"),
               "rm_accuracy": rm.get("accuracy"), "judge_accuracy": rm.get("judge_accuracy"),
               "win_rate": gate.get("win_rate"), "kl": gate.get("kl"), "accepted": gate.get("accept"),
               "deployed": dep.get("deployed")}  # fmt: skip
        if canary.get("live"):
            live = canary["live"]
            row["live"] = {
                "candidate": live["candidate"],
                "deployed": live["deployed"],
                "thumbs": live["thumbs"],
            }
            row["p_value"] = canary.get("p_value")
        rounds.append(row)
    return rounds


def summary(loop, wall_s: float) -> dict:
    sat = satisfaction(loop)
    deployed = [v["name"] for v in loop.store.versions() if v["deployed_at"] is not None]
    last = loop.store.deployed()["name"]
    shift = shift_version(loop)
    names = [v["name"] for v in loop.store.versions()]
    out = {
        "satisfaction_before": sat[deployed[0]], "satisfaction_after": sat[last],
        "satisfaction": sat, "versions": deployed, "serving": last,
        "feedback_rows": loop.store.count_feedback(), "feedback": loop.oc.feedback,
        "pairs": len(loop.store.export_pairs()), "thumbs": sum(n for _, n in loop.store.thumbs().values()),
        "rounds": round_rows(loop),
        "shift_after_version": names[shift - 1] if shift else None,
        "wall_s": round(wall_s, 1), "wall_s_total": round(loop.state("wall_s") or wall_s, 1),
        "output_dir": str(loop.run_dir),
    }  # fmt: skip
    (loop.run_dir / "result.json").write_text(json.dumps(out, indent=2))
    return out


def plot_satisfaction(rows: list[dict], shift: int | None, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [(r["step"], r["satisfaction"]) for r in rows if r["satisfaction"] is not None]
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="o")
    for r in rows:  # a rolled-back canary: marked, it never served everyone
        if r.get("decision") == "rolled_back" and r["satisfaction"] is not None:
            ax.plot([r["step"]], [100 * r["satisfaction"]], marker="x", color="red", ms=9)
    if shift is not None:
        ax.axvline(shift - 0.5, color="red", ls="--", lw=1)
        ax.text(shift - 0.45, 5, "preference shift", color="red", fontsize=8)
    ax.set_xticks([r["step"] for r in rows], [r["version"] for r in rows])
    ax.set_ylim(0, 100)
    ax.set_xlabel("version (x: canary rolled back)")
    ax.set_ylabel("thumbs-up rate (%)")
    ax.set_title("simulated users' satisfaction per version", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
