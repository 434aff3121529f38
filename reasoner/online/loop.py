"""The online loop: serve version k, collect feedback, update the reward model, RL round, gate, redeploy.

``reasoner online --config FILE [key=value ...]`` runs ``online.rounds`` rounds of five named stages::

    collect  serve version k; wait for online.min_pairs new preference pairs (or online.collect_timeout_s)
    rm       warm-start the last RM; train on a window of the pairs (all | last N | recency-weighted);
             evaluate on the newest held-out pairs; keep the old RM if the new one is less accurate
    rl       an RL round of the trainer (reasoner.train.trainer.train) from version k, the RM as reward,
             KL to version k or to v0 (online.kl_anchor)
    gate     candidate vs version k on the held-out prompts (RM score, win rate, KL; reasoner.online.gate)
    deploy   if the gate passed: copy it to versions/vN, record it (parent, RM, window, metrics), hot-swap it

A resumable state machine (a controller's reconcile loop): each stage's output is recorded in the feedback
store's ``state`` table (``round/<r>/<stage>``) before the next stage starts, and a restart skips recorded
stages. Feedback lives in the store, committed before the server acknowledges it; the RL round resumes from
its own checkpoints; a version is recorded and marked deployed in one place (the store) and the server
always starts on the store's deployed version, so kill -9 at any moment leaves nothing half-done.

With ``online.simulate=true`` (the offline default, ``make online``) a population of simulated users
(reasoner.online.simusers) talks to the server over HTTP; their hidden preference changes after
``online.shift_after_round`` rounds. The loop itself reads only the feedback.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from reasoner.config import Config, ConfigError, with_values

STAGES = ("collect", "rm", "rl", "gate", "deploy")


# ---- pure parts -------------------------------------------------------------------------------------------


def rm_window(rounds: list[list[dict]], mode: str, last_n: int, half_life: float) -> list[dict]:
    """Training rows for the RM from ``rounds[j]`` = the pairs collected in round j + 1 (oldest first).

    ``all``: every pair, weight 1. ``last``: the newest ``last_n`` pairs. ``recency``: every pair, weighted
    0.5 ** (age / half_life) where age is how many rounds ago it was collected (pairs below weight 0.01 drop).

    >>> rounds = [[{"id": 1}, {"id": 2}], [{"id": 3}]]
    >>> [(r["id"], r["weight"]) for r in rm_window(rounds, "recency", 0, 1.0)]
    [(1, 0.5), (2, 0.5), (3, 1.0)]
    >>> [r["id"] for r in rm_window(rounds, "last", 2, 1.0)]
    [2, 3]
    """
    if mode == "all":
        return [{**p, "weight": 1.0} for rnd in rounds for p in rnd]
    if mode == "last":
        flat = [p for rnd in rounds for p in rnd]
        return [{**p, "weight": 1.0} for p in flat[max(0, len(flat) - last_n) :]]
    if mode == "recency":
        now = len(rounds) - 1
        rows = [{**p, "weight": 0.5 ** ((now - j) / half_life)} for j, rnd in enumerate(rounds) for p in rnd]
        return [r for r in rows if r["weight"] >= 0.01]
    raise ValueError(f"unknown online.rm_window {mode!r}; valid: all, last, recency")


def split_heldout(pairs: list[dict], frac: float) -> tuple[list[dict], list[dict]]:
    """(train, held-out): the pairs on the newest ``frac`` of this round's prompts are held out.

    >>> rows = [{"prompt": p, "created_at": str(i)} for i, p in enumerate("aabcd")]
    >>> [[r["prompt"] for r in part] for part in split_heldout(rows, 0.5)]
    [['a', 'a', 'b'], ['c', 'd']]
    """
    prompts = list(dict.fromkeys(p["prompt"] for p in sorted(pairs, key=lambda p: p["created_at"])))
    k = max(1, math.ceil(frac * len(prompts))) if prompts else 0
    held = set(prompts[len(prompts) - k :])
    return [p for p in pairs if p["prompt"] not in held], [p for p in pairs if p["prompt"] in held]


def validate(cfg: Config) -> None:
    oc = cfg.online
    checks = [
        (oc.rounds >= 1, f"online.rounds must be >= 1; got {oc.rounds}"),
        (oc.min_pairs >= 2, f"online.min_pairs must be >= 2 (one held out for the RM and the gate); got {oc.min_pairs}"),
        (0 < oc.holdout_frac < 1, f"online.holdout_frac must be in (0, 1); got {oc.holdout_frac}"),
        (oc.rm_window != "last" or oc.rm_last_n >= 1, "online.rm_window=last needs online.rm_last_n >= 1"),
        (oc.rm_half_life > 0, f"online.rm_half_life must be > 0 (rounds); got {oc.rm_half_life}"),
        (oc.gate_samples >= 1, f"online.gate_samples must be >= 1; got {oc.gate_samples}"),
        (not oc.simulate or oc.users >= 1, "online.simulate=true needs online.users >= 1"),
    ]  # fmt: skip
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


# ---- the loop ---------------------------------------------------------------------------------------------


class OnlineLoop:
    """The stages as methods; ``run`` reconciles the recorded state with the stages still to do."""

    def __init__(self, cfg: Config, progress: bool = True):
        from reasoner.serve.store import FeedbackStore

        validate(cfg)
        self.cfg, self.oc, self.progress = cfg, cfg.online, progress
        self.run_dir = Path(self.oc.output_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.store = FeedbackStore(cfg.serve.db, sqlite_synchronous=cfg.serve.sqlite_synchronous)
        self.server = None  # the serving thread
        self.population = None  # simulated users (simulate=true)

    # -- state -------------------------------------------------------------------------------------------
    def state(self, key: str):
        return self.store.get_state(key)

    def record(self, key: str, value) -> None:
        self.store.set_state(key, value)

    def log(self, msg: str) -> None:
        print(f"[online] {msg}", flush=True)

    def run(self) -> dict:
        t0 = time.time()
        self.bootstrap()
        with self.serving():
            for r in range(1, self.oc.rounds + 1):
                for stage in STAGES:
                    key = f"round/{r}/{stage}"
                    if self.state(key) is not None:
                        continue
                    self.log(f"round {r}: {stage}")
                    t = time.time()
                    out = getattr(self, f"stage_{stage}")(r)
                    out["seconds"] = round(time.time() - t, 1)
                    self.record(key, out)
                    self.write_metrics()
            if self.oc.simulate and self.state("final/measure") is None:
                self.log("measuring the last version's satisfaction")
                self.record("final/measure", self.measure_last())
        self.record("wall_s", (self.state("wall_s") or 0.0) + time.time() - t0)
        self.write_metrics()
        return self.summary(time.time() - t0)

    # -- version 0 ---------------------------------------------------------------------------------------
    def bootstrap(self) -> None:
        """v0 = the configured policy after the config's SFT warm start (cached); recorded once."""
        if self.store.versions():
            return
        model_path = self.cfg.model.path
        if self.cfg.sft.steps > 0:
            from reasoner.train.sft import run_sft

            model_path = str(
                run_sft(self.cfg, model_path, Path(self.cfg.sft.output_dir), progress=self.progress)
            )
        path = self._copy_version(model_path, "v0")
        self.store.record_version("v0", path, parent=None, meta={"source": "online", "base": model_path})
        self.store.set_deployed("v0")

    def _copy_version(self, src: str, name: str) -> str:
        dest = self.run_dir / "versions" / name
        if not dest.is_dir():
            tmp = dest.with_name(name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("checkpoints", "*.tmp"))
            tmp.rename(dest)
        return str(dest.resolve())

    # -- serving -----------------------------------------------------------------------------------------
    @contextmanager
    def serving(self):
        """The server (a thread) on the store's deployed version, and the simulated users when simulating."""
        from reasoner.online.simusers import Population, make_users
        from reasoner.serve.app import create_app
        from reasoner.serve.server import run_in_thread
        from reasoner.serve.service import ServeService
        from reasoner.tasks.preference import gold_score, make_prompt

        deployed = self.store.deployed()
        sc = replace(self.cfg.serve, version=deployed["name"])
        if self.oc.simulate:
            sc = replace(sc, host="127.0.0.1", port=0)  # a free port on loopback
        self.service = ServeService.from_config(sc, model_path=deployed["path"])
        self.server = run_in_thread(create_app(self.service), sc.host, sc.port)
        self.log(f"serving {deployed['name']} at {self.server.url}")
        try:
            if self.oc.simulate:
                users = make_users(self.oc.users, self.oc.user_noise, self.oc.user_noise_spread, self.oc.seed)
                self.population = Population(
                    self.server.url, users, gold_score, make_prompt, self.run_dir / "simusers" / "journal.jsonl",
                    self.oc.rule_before, max_tokens=self.oc.max_tokens, seed=self.oc.seed, api_key=sc.api_key,
                )  # fmt: skip
                replayed = self.population.replay_pending()
                if replayed:
                    self.log(f"re-posted {replayed} feedback posts left unacknowledged by a kill")
            yield
        finally:
            if self.population is not None:
                self.population.close()
            self.server.stop()
            self.service.store.close()

    def rule_for(self, r: int) -> str:
        """The simulated users' hidden rule while round ``r`` collects (the loop's learner never calls this)."""
        shifted = self.oc.shift_after_round and r > self.oc.shift_after_round
        return self.oc.rule_after if shifted else self.oc.rule_before

    # -- stages ------------------------------------------------------------------------------------------
    def window_of(self, r: int) -> tuple[float, float | None]:
        prev = self.state(f"round/{r - 1}/collect") if r > 1 else None
        until = (self.state(f"round/{r}/collect") or {}).get("until")
        return (prev["until"] if prev else 0.0), until

    def stage_collect(self, r: int) -> dict:
        since, _ = self.window_of(r)
        start = time.time()
        deadline = start + self.oc.collect_timeout_s if self.oc.collect_timeout_s > 0 else math.inf
        if self.population is not None:
            self.population.set_rule(self.rule_for(r))
            self.population.start()
        count, last = 0, -1
        try:
            while True:
                rows = self.store.count_feedback(since=since)
                if rows != last:
                    count, last = len(self.store.export_pairs(since=since)), rows
                if count >= self.oc.min_pairs or (time.time() > deadline and count >= 2):
                    break
                time.sleep(0.5)
        finally:
            if self.population is not None:
                self.population.stop()
        until = time.time()
        pairs = len(self.store.export_pairs(since=since, until=until))
        version = self.store.deployed()["name"]
        self.log(f"round {r}: {pairs} pairs in {until - start:.0f}s on {version}")
        return {"since": since, "until": until, "pairs": pairs, "version": version}

    def pairs_by_round(self, r: int) -> list[list[dict]]:
        out = []
        for j in range(1, r + 1):
            w = self.state(f"round/{j}/collect")
            out.append(self.store.export_pairs(since=w["since"], until=w["until"]))
        return out

    def current_rm(self, before: int) -> str | None:
        for j in range(before - 1, 0, -1):
            rec = self.state(f"round/{j}/rm")
            if rec is not None:
                return rec["model"]
        return None

    def stage_rm(self, r: int) -> dict:
        """Train the round's RM on its window; the window restarts when the last RM fails the newest pairs."""
        from reasoner.rlhf.rm_training import evaluate_reward_model, train_reward_model

        rounds = self.pairs_by_round(r)
        train_now, heldout = split_heldout(rounds[-1], self.oc.holdout_frac)
        old = self.current_rm(r)
        old_acc = evaluate_reward_model(old, heldout)["accuracy"] if old else None
        start = (self.state(f"round/{r - 1}/rm") or {}).get("window_start", 1)
        # Preferences drift: a last RM that ranks the newest held-out pairs worse than this has learnt what
        # people wanted before. Older pairs would teach the new RM the same, so they leave the window, and
        # the RM starts again from its base rather than from the one that learnt the old preference.
        drift = old_acc is not None and old_acc < self.oc.rm_drift_threshold
        if drift:
            start = r
            self.log(f"round {r}: the last RM ranks the newest pairs at {old_acc:.2f}: preferences moved; "
                     f"window restarts at round {r}")  # fmt: skip
        window = [*rounds[start - 1 : -1], train_now]
        rows = rm_window(window, self.oc.rm_window, self.oc.rm_last_n, self.oc.rm_half_life)
        warm = old and self.oc.rm_warm_start and not drift
        base = old if warm else (self.oc.rm_base or self.store.version("v0")["path"])
        rdir = self.run_dir / "rounds" / str(r)
        out_dir = rdir / "rm"
        shutil.rmtree(out_dir, ignore_errors=True)  # a killed attempt left a partial model: train it again
        _write_jsonl(rdir / "rm_train.jsonl", rows)
        _write_jsonl(rdir / "heldout.jsonl", heldout)
        cfg = with_values(self.cfg, {"rm.output_dir": str(out_dir), "rm.resume": False})
        result = train_reward_model(cfg, base, rows, heldout, str(out_dir), progress=self.progress)
        new_acc = result.get("accuracy")
        keep_old = old is not None and new_acc is not None and old_acc > new_acc
        model = old if keep_old else result["model"]
        self.log(
            f"round {r}: RM accuracy {new_acc} (last RM {old_acc}) on {len(heldout)} held-out pairs -> {model}"
        )
        collects = [self.state(f"round/{j}/collect") for j in range(start, r + 1)]
        return {"model": model, "trained": result["model"], "base": base, "accuracy": new_acc,
                "old_accuracy": old_acc, "kept_old": keep_old, "drift": drift, "window_start": start,
                "train_pairs": len(rows), "heldout_pairs": len(heldout),
                "window": {"mode": self.oc.rm_window, "rounds": list(range(start, r + 1)),
                           "since": collects[0]["since"], "until": collects[-1]["until"]},
                "weights": sorted({round(row["weight"], 4) for row in rows})}  # fmt: skip

    def stage_rl(self, r: int) -> dict:
        from reasoner.config import RewardTerm
        from reasoner.train.trainer import train

        parent = self.store.deployed()
        rm = self.state(f"round/{r}/rm")["model"]
        heldout = {p["prompt"] for p in _read_jsonl(self.run_dir / "rounds" / str(r) / "heldout.jsonl")}
        recent = sorted((p for rnd in self.pairs_by_round(r) for p in rnd), key=lambda p: p["created_at"])
        prompts = [p for p in dict.fromkeys(p["prompt"] for p in reversed(recent)) if p not in heldout]
        rdir = self.run_dir / "rounds" / str(r)
        _write_jsonl(rdir / "rl_prompts.jsonl", [{"prompt": p} for p in prompts[: self.oc.rl_prompts]])
        _write_jsonl(rdir / "gate_prompts.jsonl", [{"prompt": p} for p in sorted(heldout)])
        cfg = with_values(self.cfg, {
            "model.path": parent["path"],
            "model.reference": self.store.version("v0")["path"] if self.oc.kl_anchor == "original" else None,
            "sft.steps": 0,
            "task.name": "prompts", "task.train": str(rdir / "rl_prompts.jsonl"),
            "task.test": str(rdir / "gate_prompts.jsonl"),
            "task.train_size": None, "task.eval_size": min(8, len(heldout)), "task.chat_template": False,
            "task.rewards": [RewardTerm(name="model", weight=1.0)],
            "reward_model.paths": [rm],
            "train.output_dir": str(rdir / "rl"), "train.resume": True, "train.eval_every": 0,
            "train.seed": self.oc.seed * 1000 + r,
        })  # fmt: skip
        result = train(cfg, progress=self.progress)
        return {"parent": parent["name"], "candidate": str(rdir / "rl" / "final"), "rm": rm, "result": result,
                "prompts": min(len(prompts), self.oc.rl_prompts), "kl_anchor": self.oc.kl_anchor}  # fmt: skip

    def stage_gate(self, r: int) -> dict:
        from reasoner.online.gate import compare, decide
        from reasoner.rewards.reward_model import RewardModel

        rl = self.state(f"round/{r}/rl")
        prompts = [p["prompt"] for p in _read_jsonl(self.run_dir / "rounds" / str(r) / "gate_prompts.jsonl")]
        rm = RewardModel(rl["rm"], normalize="none")
        # KL to the policy the RL round was anchored to: after a preference shift, version k may give the newly
        # wanted answers little mass, while v0 (both styles) tells a style switch from a drift into noise.
        anchor = self.store.version("v0")["path"] if self.oc.kl_anchor == "original" else None
        metrics = compare(rl["candidate"], self.store.version(rl["parent"])["path"], prompts, rm.score,
                          samples=self.oc.gate_samples, max_new_tokens=self.cfg.rollout.max_new_tokens,
                          seed=self.oc.seed * 1000 + r, kl_reference=anchor)  # fmt: skip
        metrics["kl_to"] = "v0" if anchor else rl["parent"]
        accept, reasons = decide(metrics, min_win_rate=self.oc.gate_min_win_rate,
                                 score_tolerance=self.oc.gate_score_tolerance,
                                 verifiable_tolerance=self.oc.gate_verifiable_tolerance, max_kl=self.oc.gate_max_kl)  # fmt: skip
        self.log(f"round {r}: gate {'passed' if accept else 'refused: ' + '; '.join(reasons)} "
                 f"(win rate {metrics['win_rate']:.2f}, RM {metrics['score_candidate']:.2f} vs "
                 f"{metrics['score_parent']:.2f}, KL to {metrics['kl_to']} {metrics['kl']:.3f})")  # fmt: skip
        return {"accept": accept, "reasons": reasons, **metrics}

    def stage_deploy(self, r: int) -> dict:
        gate, rl = self.state(f"round/{r}/gate"), self.state(f"round/{r}/rl")
        if not gate["accept"]:
            return {"deployed": None, "serving": rl["parent"]}
        accepted = sum(1 for j in range(1, r) if (self.state(f"round/{j}/deploy") or {}).get("deployed"))
        name = (
            f"v{accepted + 1}"  # a function of the recorded rounds: a rerun after a kill picks the same name
        )
        path = self._copy_version(rl["candidate"], name)
        meta = {"round": r, "parent": rl["parent"], "rm": rl["rm"], "window": self.state(f"round/{r}/rm")["window"],
                "gate": {k: gate[k] for k in ("win_rate", "score_candidate", "score_parent", "kl")}}  # fmt: skip
        if self.store.deployed()["name"] != name:
            self.service.deploy(path, name, meta=meta)
        self.log(f"round {r}: deployed {name} (parent {rl['parent']})")
        return {"deployed": name, "path": path, "parent": rl["parent"]}

    def measure_last(self) -> dict:
        """Thumbs on the last version from fresh prompts, under the users' current rule (simulate only)."""
        version = self.store.deployed()["name"]
        before = self._thumbs(version)
        self.population.set_rule(self.rule_for(self.oc.rounds + 1))
        self.population.start()
        try:
            while self._thumbs(version) - before < self.oc.satisfaction_prompts:
                time.sleep(0.5)
        finally:
            self.population.stop()
        return {"version": version, "thumbs": self._thumbs(version) - before}

    def _thumbs(self, version: str) -> int:
        for v in self.store.stats()["versions"]:
            if v["version"] == version:
                return v["up"] + v["down"]
        return 0

    # -- reporting ---------------------------------------------------------------------------------------
    def satisfaction(self) -> dict[str, float | None]:
        rates = {v["version"]: v["thumbs_up_rate"] for v in self.store.stats()["versions"]}
        return {v["name"]: rates.get(v["name"]) for v in self.store.versions()}

    def version_rows(self) -> list[dict]:
        """One row per version: its satisfaction and what made it (round, RM accuracy, gate metrics)."""
        sat, rows = self.satisfaction(), []
        for i, v in enumerate(self.store.versions()):
            row = {"step": i, "version": v["name"], "parent": v["parent"], "satisfaction": sat[v["name"]]}
            r = v["meta"].get("round")
            if r is not None:
                rm, gate = self.state(f"round/{r}/rm") or {}, self.state(f"round/{r}/gate") or {}
                row |= {"round": r, "rm_accuracy": rm.get("accuracy"), "win_rate": gate.get("win_rate"),
                        "kl": gate.get("kl"), "rm_score": gate.get("score_candidate")}  # fmt: skip
            rows.append(row)
        return rows

    def write_metrics(self) -> None:
        """Rebuild versions.jsonl, TensorBoard and the PNG from the recorded state (idempotent)."""
        from reasoner.train.metrics import MetricsLogger

        rows = self.version_rows()
        log = MetricsLogger(self.run_dir, self.cfg.train.tensorboard)
        for row in rows:
            log.log(row["step"], {k: v for k, v in row.items() if k != "step" and v is not None})
        log.close()
        shutil.copy(self.run_dir / "metrics.jsonl", self.run_dir / "versions.jsonl")
        plot_satisfaction(rows, self.shift_version(), self.run_dir / "satisfaction.png")

    def shift_version(self) -> int | None:
        """Index of the first version the users judged after their preference shifted (simulate only)."""
        if not (self.oc.simulate and self.oc.shift_after_round):
            return None
        collect = self.state(f"round/{self.oc.shift_after_round + 1}/collect")
        if collect is None:
            return None
        names = [v["name"] for v in self.store.versions()]
        return names.index(collect["version"])

    def summary(self, wall_s: float) -> dict:
        sat = self.satisfaction()
        deployed = [v["name"] for v in self.store.versions() if v["deployed_at"] is not None]
        rounds = []
        for r in range(1, self.oc.rounds + 1):
            rm, gate, dep = (self.state(f"round/{r}/{s}") or {} for s in ("rm", "gate", "deploy"))
            rounds.append({"round": r, "rm_accuracy": rm.get("accuracy"), "win_rate": gate.get("win_rate"),
                           "kl": gate.get("kl"), "accepted": gate.get("accept"), "deployed": dep.get("deployed")})  # fmt: skip
        shift = self.shift_version()
        out = {
            "satisfaction_before": sat[deployed[0]], "satisfaction_after": sat[deployed[-1]],
            "satisfaction": sat, "versions": deployed, "feedback_rows": self.store.count_feedback(),
            "pairs": len(self.store.export_pairs()), "rounds": rounds,
            "shift_after_version": None if shift is None else deployed[shift - 1] if shift > 0 else None,
            "wall_s": round(wall_s, 1), "wall_s_total": round(self.state("wall_s") or wall_s, 1),
            "output_dir": str(self.run_dir),
        }  # fmt: skip
        (self.run_dir / "result.json").write_text(json.dumps(out, indent=2))
        return out


def plot_satisfaction(rows: list[dict], shift: int | None, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [(r["step"], r["satisfaction"]) for r in rows if r["satisfaction"] is not None]
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="o")
    if shift is not None:
        ax.axvline(shift - 0.5, color="red", ls="--", lw=1)
        ax.text(shift - 0.45, 5, "preference shift", color="red", fontsize=8)
    ax.set_xticks([r["step"] for r in rows], [r["version"] for r in rows])
    ax.set_ylim(0, 100)
    ax.set_xlabel("deployed version")
    ax.set_ylabel("thumbs-up rate (%)")
    ax.set_title("simulated users' satisfaction per version", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def run_online(cfg: Config, progress: bool = True) -> dict:
    return OnlineLoop(cfg, progress).run()
