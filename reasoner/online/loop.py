"""The online loop: serve version k, collect feedback, update the reward model, RL round, gate, redeploy.

``reasoner online --config FILE [key=value ...]`` runs ``online.rounds`` rounds of six named stages::

    collect  serve version k; wait for online.min_pairs new preference pairs or online.min_thumbs single
             thumbs (or online.collect_timeout_s)
    rm       warm-start the last RM; train on a window of the pairs and thumbs (all | last N | recency);
             evaluate on the newest held-out ones; keep the old RM if the new one is less accurate. With
             online.gate_judge=member a second RM (another seed, its own chain) is trained to judge the gate
    rl       an RL round of the trainer (reasoner.train.trainer.train) from version k, the RM as reward,
             KL to version k or to v0 (online.kl_anchor)
    gate     candidate vs version k on the held-out prompts (the judge RM's score and win rate, KL; gate.py)
    canary   if the gate passed: the candidate, named v<round>, answers online.canary_frac of live requests
             until both versions have online.canary_min_thumbs thumbs; promoted unless a one-sided test finds
             its thumbs-up rate lower (canary.py); each decision is recorded in the store's decisions table
    deploy   promoted: it becomes the deployed version; rolled back or refused: version k stays

``reasoner online rollback VERSION --config FILE`` rolls a deployed version back to its parent, or ends its
canary, by hand (recorded as a decision ``by: hand``); a running loop picks it up from the store.

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
from reasoner.online.report import summary, write_metrics

STAGES = ("collect", "rm", "rl", "gate", "canary", "deploy")


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
        (0 <= oc.canary_frac < 1, f"online.canary_frac must be in [0, 1) (0 = no canary); got {oc.canary_frac}"),
        (0 < oc.canary_alpha < 1, f"online.canary_alpha must be in (0, 1); got {oc.canary_alpha}"),
        (oc.canary_min_thumbs >= 1, f"online.canary_min_thumbs must be >= 1; got {oc.canary_min_thumbs}"),
        (oc.min_thumbs >= 2, f"online.min_thumbs must be >= 2; got {oc.min_thumbs}"),
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
                    write_metrics(self)
            if self.oc.simulate and self.state("final/measure") is None:
                self.log("measuring the last version's satisfaction")
                self.record("final/measure", self.measure_last())
        self.record("wall_s", (self.state("wall_s") or 0.0) + time.time() - t0)
        write_metrics(self)
        return summary(self, time.time() - t0)

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
                    feedback=self.oc.feedback,
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

    def follow_store(self) -> None:
        """Serve the store's deployed version (a rollback by hand changes it while the loop runs)."""
        name = self.store.deployed()["name"]
        if name != self.service.policy.name:
            self.log(f"the store's deployed version is {name} (rolled back by hand): serving it")
            self.service.rollback_to(name)

    def rule_for(self, r: int) -> str:
        """The simulated users' hidden rule while round ``r`` collects (the loop's learner never calls this)."""
        shifted = self.oc.shift_after_round and r > self.oc.shift_after_round
        return self.oc.rule_after if shifted else self.oc.rule_before

    @contextmanager
    def users_active(self, rule: str):
        if self.population is not None:
            self.population.set_rule(rule)
            self.population.start()
        try:
            yield
        finally:
            if self.population is not None:
                self.population.stop()

    # -- stages ------------------------------------------------------------------------------------------
    def window_of(self, r: int) -> tuple[float, float | None]:
        prev = self.state(f"round/{r - 1}/collect") if r > 1 else None
        until = (self.state(f"round/{r}/collect") or {}).get("until")
        return (prev["until"] if prev else 0.0), until

    def collected(self, since: float, until: float | None = None) -> tuple[int, int]:
        """(preference pairs, single thumbs: points on answers no pair covers) since ``since``."""
        pairs = self.store.export_pairs(since=since, until=until)
        covered = {tuple(p[k].values()) for p in pairs for k in ("chosen_ref", "rejected_ref")}
        points = self.store.export_points(since=since, until=until)
        singles = [p for p in points if p["source"] == "thumbs" and tuple(p["ref"].values()) not in covered]
        return len(pairs), len(singles)

    def stage_collect(self, r: int) -> dict:
        since, _ = self.window_of(r)
        start = time.time()
        deadline = start + self.oc.collect_timeout_s if self.oc.collect_timeout_s > 0 else math.inf
        (pairs, singles), last = (0, 0), -1
        with self.users_active(self.rule_for(r)):
            while True:
                self.follow_store()
                rows = self.store.count_feedback(since=since)
                if rows != last:
                    (pairs, singles), last = self.collected(since), rows
                if pairs >= self.oc.min_pairs or singles >= self.oc.min_thumbs:
                    break
                if time.time() > deadline and pairs + singles >= 2:
                    break
                time.sleep(0.5)
        until = time.time()
        pairs, singles = self.collected(since, until)
        version = self.store.deployed()["name"]
        self.log(f"round {r}: {pairs} pairs and {singles} single thumbs in {until - start:.0f}s on {version}")
        return {"since": since, "until": until, "pairs": pairs, "thumbs": singles, "version": version}

    def rows_by_round(self, r: int) -> list[list[dict]]:
        """Per round 1..r: its pairs and its unpaired rows (thumbs, "both bad"), the RM's training rows."""
        out = []
        for j in range(1, r + 1):
            w = self.state(f"round/{j}/collect")
            rows = self.store.export_pairs(since=w["since"], until=w["until"])
            rows += self.store.export_points(since=w["since"], until=w["until"])
            out.append(sorted(rows, key=lambda p: p["created_at"]))
        return out

    def current_rm(self, before: int, key: str = "model") -> str | None:
        for j in range(before - 1, 0, -1):
            rec = self.state(f"round/{j}/rm")
            if rec is not None and rec.get(key):
                return rec[key]
        return None

    def stage_rm(self, r: int) -> dict:
        """Train the round's RM on its window; the window restarts when the last RM fails the newest rows."""
        from reasoner.rlhf.rm_training import evaluate_reward_model

        rounds = self.rows_by_round(r)
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
            self.log(f"round {r}: the last RM ranks the newest rows at {old_acc:.2f}: preferences moved; "
                     f"window restarts at round {r}")  # fmt: skip
        window = [*rounds[start - 1 : -1], train_now]
        rows = rm_window(window, self.oc.rm_window, self.oc.rm_last_n, self.oc.rm_half_life)
        rdir = self.run_dir / "rounds" / str(r)
        _write_jsonl(rdir / "rm_train.jsonl", rows)
        _write_jsonl(rdir / "heldout.jsonl", heldout)
        result = self._train_rm(r, "model", rdir / "rm", rows, heldout, drift, seed=0)
        new_acc = result.get("accuracy")
        keep_old = old is not None and new_acc is not None and old_acc > new_acc
        model = old if keep_old else result["model"]
        self.log(
            f"round {r}: RM accuracy {new_acc} (last RM {old_acc}) on {len(heldout)} held-out rows -> {model}"
        )
        out = {"model": model, "trained": result["model"], "base": result["base"], "accuracy": new_acc,
               "old_accuracy": old_acc, "kept_old": keep_old, "drift": drift, "window_start": start,
               "train_rows": len(rows), "heldout_rows": len(heldout),
               "train_pairs": sum("chosen" in x for x in rows), "train_thumbs": sum("label" in x for x in rows)}  # fmt: skip
        if self.oc.gate_judge == "member":
            # The gate's judge: an RM the RL round does not optimise (another seed and its own warm-start chain).
            judge = self._train_rm(r, "judge", rdir / "judge", rows, heldout, drift, seed=1)
            out |= {"judge": judge["model"], "judge_accuracy": judge.get("accuracy")}
            self.log(f"round {r}: judge RM accuracy {judge.get('accuracy')} -> {judge['model']}")
        collects = [self.state(f"round/{j}/collect") for j in range(start, r + 1)]
        out["window"] = {"mode": self.oc.rm_window, "rounds": list(range(start, r + 1)),
                         "since": collects[0]["since"], "until": collects[-1]["until"]}  # fmt: skip
        out["weights"] = sorted({round(row["weight"], 4) for row in rows})
        return out

    def _train_rm(self, r: int, key: str, out_dir: Path, rows, heldout, drift: bool, seed: int) -> dict:
        from reasoner.rlhf.rm_training import train_reward_model

        old = self.current_rm(r, key)
        warm = old and self.oc.rm_warm_start and not drift
        base = old if warm else (self.oc.rm_base or self.store.version("v0")["path"])
        shutil.rmtree(out_dir, ignore_errors=True)  # a killed attempt left a partial model: train it again
        cfg = with_values(self.cfg, {"rm.output_dir": str(out_dir), "rm.resume": False,
                                     "train.seed": self.cfg.train.seed + seed})  # fmt: skip
        result = train_reward_model(cfg, base, rows, heldout or None, str(out_dir), progress=self.progress)
        return {**result, "base": base}

    def stage_rl(self, r: int) -> dict:
        from reasoner.config import RewardTerm
        from reasoner.train.trainer import train

        parent = self.store.deployed()
        rm = self.state(f"round/{r}/rm")
        heldout = {p["prompt"] for p in _read_jsonl(self.run_dir / "rounds" / str(r) / "heldout.jsonl")}
        recent = sorted((p for rnd in self.rows_by_round(r) for p in rnd), key=lambda p: p["created_at"])
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
            "reward_model.paths": [rm["model"]],
            "train.output_dir": str(rdir / "rl"), "train.resume": True, "train.eval_every": 0,
            "train.seed": self.oc.seed * 1000 + r,
        })  # fmt: skip
        result = train(cfg, progress=self.progress)
        return {"parent": parent["name"], "candidate": str(rdir / "rl" / "final"), "rm": rm["model"],
                "judge": rm.get("judge"), "result": result, "prompts": min(len(prompts), self.oc.rl_prompts),
                "kl_anchor": self.oc.kl_anchor}  # fmt: skip

    def stage_gate(self, r: int) -> dict:
        from reasoner.online.gate import compare, decide
        from reasoner.rewards.reward_model import RewardModel

        rl = self.state(f"round/{r}/rl")
        prompts = [p["prompt"] for p in _read_jsonl(self.run_dir / "rounds" / str(r) / "gate_prompts.jsonl")]
        # The judge is an RM the round did not optimise (online.gate_judge=member): a candidate that games the
        # round's own RM wins under it, not under the judge.
        judge = rl.get("judge") or rl["rm"]
        rm = RewardModel(judge, normalize="none")
        # KL to the policy the RL round was anchored to: after a preference shift, version k may give the newly
        # wanted answers little mass, while v0 (both styles) tells a style switch from a drift into noise.
        anchor = self.store.version("v0")["path"] if self.oc.kl_anchor == "original" else None
        metrics = compare(rl["candidate"], self.store.version(rl["parent"])["path"], prompts, rm.score,
                          samples=self.oc.gate_samples, max_new_tokens=self.cfg.rollout.max_new_tokens,
                          seed=self.oc.seed * 1000 + r, kl_reference=anchor)  # fmt: skip
        metrics["kl_to"] = "v0" if anchor else rl["parent"]
        metrics["judge"] = judge
        accept, reasons = decide(metrics, min_win_rate=self.oc.gate_min_win_rate,
                                 score_tolerance=self.oc.gate_score_tolerance,
                                 verifiable_tolerance=self.oc.gate_verifiable_tolerance, max_kl=self.oc.gate_max_kl)  # fmt: skip
        self.log(f"round {r}: gate {'passed' if accept else 'refused: ' + '; '.join(reasons)} "
                 f"(win rate {metrics['win_rate']:.2f}, judge RM {metrics['score_candidate']:.2f} vs "
                 f"{metrics['score_parent']:.2f}, KL to {metrics['kl_to']} {metrics['kl']:.3f})")  # fmt: skip
        return {"accept": accept, "reasons": reasons, **metrics}

    def stage_canary(self, r: int) -> dict:
        """The candidate (``v<r>``) on ``canary_frac`` of live requests until the thumbs decide; resumable: the
        canary's start is recorded, and the thumbs given before a kill still count."""
        from reasoner.online.canary import canary_decision

        gate, rl = self.state(f"round/{r}/gate"), self.state(f"round/{r}/rl")
        name, parent = f"v{r}", rl["parent"]
        if not gate["accept"]:
            self.store.record_decision(
                f"round/{r}", name, "refused", against=parent, meta={"reasons": gate["reasons"]}
            )
            return {"candidate": name, "decision": "refused", "against": parent}
        path = self._copy_version(rl["candidate"], name)
        meta = {"round": r, "parent": parent, "rm": rl["rm"], "judge": rl.get("judge"),
                "window": self.state(f"round/{r}/rm")["window"],
                "gate": {k: gate[k] for k in ("win_rate", "score_candidate", "score_parent", "kl")}}  # fmt: skip
        if self.oc.canary_frac <= 0:  # no canary: the gate decides
            self.store.record_version(name, path, parent=parent, meta=meta)
            self.store.record_decision(f"round/{r}", name, "promoted", against=parent, meta={"canary": False})
            return {"candidate": name, "decision": "promoted", "against": parent, "path": path}
        began = self.state(f"round/{r}/canary_start")
        if began is None:
            began = {"since": time.time(), "candidate": name, "against": parent}
            self.record(f"round/{r}/canary_start", began)
        self.service.start_canary(path, name, self.oc.canary_frac, meta)
        self.log(f"round {r}: canary {name} on {self.oc.canary_frac:.0%} of requests beside {parent}")
        deadline = began["since"] + self.oc.canary_timeout_s if self.oc.canary_timeout_s > 0 else math.inf
        by, why = "loop", None
        # the canary's traffic counts towards the next round's collection, so the users judge by its rule
        with self.users_active(self.rule_for(r + 1)):
            while True:
                thumbs = self.store.thumbs(since=began["since"])
                (up_c, n_c), (up_d, n_d) = thumbs.get(name, (0, 0)), thumbs.get(parent, (0, 0))
                d = canary_decision(up_c, n_c, up_d, n_d, alpha=self.oc.canary_alpha,
                                    min_thumbs=self.oc.canary_min_thumbs)  # fmt: skip
                if self.rolled_back_by_hand(name):
                    d["decision"], by, why = "rolled_back", "hand", "rolled back by hand"
                elif d["decision"] is None and time.time() > deadline:
                    d["decision"], why = (
                        "rolled_back",
                        f"too few thumbs in online.canary_timeout_s={self.oc.canary_timeout_s}",
                    )
                if d["decision"] is not None:
                    break
                time.sleep(0.5)
        live = d["live"]
        self.store.record_decision(f"round/{r}", name, d["decision"], against=parent, by=by, live=live,
                                   p_value=d["p_value"], meta={"alpha": self.oc.canary_alpha, "why": why})  # fmt: skip
        rate = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
        self.log(f"round {r}: canary {name} {d['decision']}: thumbs-up {rate(live['candidate'])} "
                 f"({n_c} thumbs) vs {parent} {rate(live['deployed'])} ({n_d}), p = {d['p_value']}")  # fmt: skip
        return {"candidate": name, "decision": d["decision"], "against": parent, "path": path, "live": live,
                "p_value": d["p_value"], "by": by, "why": why}  # fmt: skip

    def rolled_back_by_hand(self, version: str) -> bool:
        return any(d["version"] == version and d["by"] == "hand" for d in self.store.decisions())

    def stage_deploy(self, r: int) -> dict:
        canary = self.state(f"round/{r}/canary")
        name, decision = canary["candidate"], canary["decision"]
        if decision != "promoted":
            self.service.end_canary(promote=False)
            return {"deployed": None, "serving": self.store.deployed()["name"], "decision": decision}
        if self.service.canary is not None and self.service.canary.name == name:
            self.service.end_canary(promote=True)
        elif self.store.deployed()["name"] != name:  # restarted after the canary (or no canary): load it
            self.service.rollback_to(name)
        self.log(f"round {r}: deployed {name} (parent {canary['against']})")
        return {"deployed": name, "path": canary["path"], "parent": canary["against"], "decision": decision}

    def measure_last(self) -> dict:
        """Thumbs on the last version from fresh prompts, under the users' current rule (simulate only)."""
        version = self.store.deployed()["name"]
        before = self._thumbs(version)
        with self.users_active(self.rule_for(self.oc.rounds + 1)):
            while self._thumbs(version) - before < self.oc.satisfaction_prompts:
                time.sleep(0.5)
        return {"version": version, "thumbs": self._thumbs(version) - before}

    def _thumbs(self, version: str) -> int:
        return self.store.thumbs().get(version, (0, 0))[1]


def rollback_by_hand(cfg: Config, version: str) -> dict:
    """``reasoner online rollback VERSION``: a deployed version gives way to its parent; a version in its canary
    ends it (the running loop sees the decision). Recorded as a decision ``by: hand`` with the live thumbs."""
    from reasoner.serve.store import FeedbackStore

    store = FeedbackStore(cfg.serve.db, sqlite_synchronous=cfg.serve.sqlite_synchronous)
    try:
        deployed = store.deployed()
        v = store.version(version)  # NotFound names an unknown version
        if deployed is not None and deployed["name"] == version:
            if v["parent"] is None:
                raise ConfigError(f"{version} has no parent to roll back to (it is the first version)")
            against = v["parent"]
        elif v["deployed_at"] is None and _in_canary(store, version):
            against = v["parent"]
        else:
            raise ConfigError(f"{version} is neither deployed nor in a canary (deployed: {deployed['name']})")
        thumbs = store.thumbs()
        (up_c, n_c), (up_d, n_d) = thumbs.get(version, (0, 0)), thumbs.get(against, (0, 0))
        live = {"candidate": up_c / n_c if n_c else None, "deployed": up_d / n_d if n_d else None,
                "thumbs": [n_c, n_d], "up": [up_c, up_d]}  # fmt: skip
        if v["deployed_at"] is not None:
            store.set_deployed(against)
        d = store.record_decision(f"hand/{version}/{time.time():.3f}", version, "rolled_back", against=against,
                                  by="hand", live=live)  # fmt: skip
        return {"rolled_back": version, "serving": store.deployed()["name"], "decision": d}
    finally:
        store.close()


def _in_canary(store, version: str) -> bool:
    """A canary started for ``version`` (round r's candidate is ``v<r>``) and not decided yet."""
    r = version[1:] if version.startswith("v") and version[1:].isdigit() else None
    started = r is not None and (store.get_state(f"round/{r}/canary_start") or {}).get("candidate") == version
    return started and not any(d["version"] == version for d in store.decisions())


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def run_online(cfg: Config, progress: bool = True) -> dict:
    return OnlineLoop(cfg, progress).run()
