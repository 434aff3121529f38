"""The serving service: the deployed policy, batched generation, hot swaps, and feedback into the store.

Routes (reasoner.serve.app) validate and translate; this module holds the logic; the store speaks SQL.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from reasoner.config import ServeConfig
from reasoner.rollout.base import SamplingParams
from reasoner.serve.batcher import Batcher, Generated
from reasoner.serve.decode import Choice, TokenStream
from reasoner.serve.store import FeedbackStore


class ServiceError(Exception):
    """A request the service refuses; ``status`` and ``param`` (the field at fault) go into the HTTP answer."""

    def __init__(
        self, status: int, message: str, param: str | None = None, type: str = "invalid_request_error"
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.type = status, message, param, type


@dataclass
class Policy:
    """One loaded policy version.

    ``tokenizer`` belongs to the generate thread (the engine pads batches with it, the batcher and the streams
    decode with it); ``loop_tokenizer`` is the event loop's own copy (chat templates, prompt-length checks). A fast
    tokenizer's padding and truncation settings are state its calls share: one thread's single-text call turns
    padding off under another thread's batch, whose rows then come back of unequal lengths (issue 32).
    """

    name: str
    path: str
    model: object
    tokenizer: object
    engine: object
    max_positions: int | None
    loop_tokenizer: object = None  # None: a deep copy of ``tokenizer``

    def __post_init__(self):
        if self.loop_tokenizer is None:
            self.loop_tokenizer = copy.deepcopy(self.tokenizer)


def load_policy_version(name: str, path: str, dtype: str = "auto", max_batch: int = 64) -> Policy:
    from reasoner.models import load_policy, load_tokenizer
    from reasoner.rollout.hf import HFEngine

    if path.startswith(("/", "./", "../", "~")) and not Path(path).expanduser().exists():
        raise FileNotFoundError(
            f"model directory {path!r} not found (build one with `reasoner tiny-model --out DIR` or train one)"
        )
    tokenizer = load_tokenizer(path)
    model = load_policy(path, dtype)
    model.eval()
    engine = HFEngine(model, tokenizer, batch_size=max_batch)
    return Policy(
        name, path, model, tokenizer, engine, getattr(model.config, "max_position_embeddings", None)
    )


def check_config(cfg: ServeConfig) -> None:
    """The ``serve`` section's values that types alone do not rule out; the message names the key."""
    from reasoner.config import ConfigError

    rules = [
        ("port", 0 <= cfg.port <= 65535, "be in 0..65535 (0 = a free port)"),
        ("batch_window_ms", 0 <= cfg.batch_window_ms <= 1000, "be in 0..1000"),
        ("max_batch", cfg.max_batch >= 1, "be at least 1"),
        ("max_body_bytes", cfg.max_body_bytes >= 1024, "be at least 1024"),
        ("max_tokens_cap", cfg.max_tokens_cap >= 1, "be at least 1"),
        (
            "default_max_tokens",
            1 <= cfg.default_max_tokens <= cfg.max_tokens_cap,
            "be in 1..serve.max_tokens_cap",
        ),
        ("max_n", cfg.max_n >= 1, "be at least 1"),
        ("api_key", cfg.api_key is None or len(cfg.api_key) >= 1, "be non-empty (or unset)"),
        (
            "admin_key",
            cfg.admin_key is None or len(cfg.admin_key) >= 8,
            "be at least 8 characters (or unset)",
        ),
    ]
    for key, ok, rule in rules:
        if not ok:
            raise ConfigError(f"serve.{key} must {rule}; got {getattr(cfg, key)!r}")


def resolve_path(path: str) -> str:
    return str(Path(path).resolve()) if Path(path).exists() else path


class ServeService:
    def __init__(self, cfg: ServeConfig, store: FeedbackStore, policy: Policy):
        self.cfg, self.store, self.policy = cfg, store, policy
        self.batcher = Batcher(lambda: self.policy, cfg.batch_window_ms / 1000.0, cfg.max_batch)
        self._deploy_lock = threading.Lock()
        # The canary: a candidate version that answers ``canary_frac`` of the requests to the stable name
        # (its own batcher: one decoding batch holds one model). Set and ended by the online loop.
        self.canary: Policy | None = None
        self.canary_frac = 0.0
        self._canary_batcher: Batcher | None = None
        self._route = random.Random()

    @classmethod
    def from_config(cls, cfg: ServeConfig, model_path: str | None = None) -> ServeService:
        """Open the store, load the policy and record it as the deployed version.

        The version name is ``cfg.version`` if set; else the deployed version's name when it is the same path
        (a restart); else the next free ``vN``, whose parent is the previously deployed version.
        """
        from reasoner.models import set_cpu_threads

        check_config(cfg)
        set_cpu_threads(cfg.cpu_threads)
        path = resolve_path(model_path or cfg.model or "")
        if not path:
            raise ValueError("no model to serve: give --model PATH (or serve.model=PATH)")
        store = FeedbackStore(cfg.db, sqlite_synchronous=cfg.sqlite_synchronous)
        current = store.deployed()
        if cfg.version:
            name = cfg.version
        elif current is not None and current["path"] == path:
            name = current["name"]
        else:
            name = _next_version(store)
        policy = load_policy_version(name, path, cfg.dtype, cfg.max_batch)
        parent = current["name"] if current is not None and current["name"] != name else None
        store.record_version(name, path, parent=parent, meta={"source": "serve"})
        store.set_deployed(name)
        return cls(cfg, store, policy)

    # --- hot swap -----------------------------------------------------------------------------------------
    def deploy(self, path: str, version: str | None = None, meta: dict | None = None) -> str:
        """Load ``path`` and make it the deployed version; requests in flight finish on the old one.

        Returns the new version's name (``version``, or the next free ``vN``).
        """
        path = resolve_path(path)
        with self._deploy_lock:
            previous = self.policy.name
            name = version or _next_version(self.store)
            if name == previous:
                raise ServiceError(409, f"version {name!r} is already deployed", "version")
            try:
                policy = load_policy_version(name, path, self.cfg.dtype, self.cfg.max_batch)
            except (OSError, ValueError) as e:
                raise ServiceError(400, f"cannot load a policy from path {path!r}: {e}", "path") from e
            self.store.record_version(name, path, parent=previous, meta=meta or {"source": "deploy"})
            self.store.set_deployed(name)
            self.policy = policy  # one reference swap: the next batch uses it
        return name

    # --- canary -------------------------------------------------------------------------------------------
    def start_canary(self, path: str, version: str, frac: float, meta: dict | None = None) -> str:
        """Serve ``path`` as ``version`` on ``frac`` of the requests beside the deployed version (recorded in the
        store, not deployed; its parent is the deployed version). Idempotent for the same version."""
        if not 0.0 < frac < 1.0:
            raise ServiceError(422, f"frac must be in (0, 1); got {frac}", "frac")
        path = resolve_path(path)
        with self._deploy_lock:
            if self.canary is not None and self.canary.name == version:
                self.canary_frac = frac
                return version
            if version == self.policy.name:
                raise ServiceError(409, f"version {version!r} is the deployed one", "version")
            try:
                policy = load_policy_version(version, path, self.cfg.dtype, self.cfg.max_batch)
            except (OSError, ValueError) as e:
                raise ServiceError(400, f"cannot load a policy from path {path!r}: {e}", "path") from e
            self.store.record_version(
                version, path, parent=self.policy.name, meta=meta or {"source": "canary"}
            )
            self._canary_batcher = Batcher(
                lambda: policy, self.cfg.batch_window_ms / 1000.0, self.cfg.max_batch
            )
            self.canary, self.canary_frac = policy, frac
        return version

    def end_canary(self, promote: bool) -> str | None:
        """Stop the canary; with ``promote`` it becomes the deployed version. Returns the canary's name (None: no
        canary was running)."""
        with self._deploy_lock:
            canary, self.canary, self.canary_frac = self.canary, None, 0.0
            if canary is None:
                return None
            if promote:
                self.store.set_deployed(canary.name)
                self.policy = canary
        return canary.name

    def rollback_to(self, version: str) -> str:
        """Serve ``version`` (already in the store) as the deployed one again, e.g. a rolled-back version's parent."""
        v = self.store.version(version)
        with self._deploy_lock:
            if self.policy.name != version:
                policy = load_policy_version(version, v["path"], self.cfg.dtype, self.cfg.max_batch)
                self.store.set_deployed(version)
                self.policy = policy
        return version

    def rollback(self, version: str) -> dict:
        """By hand (``POST /admin/rollback``): end ``version``'s canary, or serve the deployed ``version``'s parent
        again; recorded as a decision ``by: hand`` with both versions' thumbs so far."""
        canary = self.canary.name if self.canary is not None else None
        if version == canary:
            against = self.policy.name
            self.end_canary(promote=False)
        elif version == self.policy.name:
            against = self.store.version(version)["parent"]
            if against is None:
                raise ServiceError(409, f"{version} has no parent to roll back to", "version")
            self.rollback_to(against)
        else:
            raise ServiceError(409, f"{version} is neither deployed nor in a canary", "version")
        thumbs = self.store.thumbs()
        (up_c, n_c), (up_d, n_d) = thumbs.get(version, (0, 0)), thumbs.get(against, (0, 0))
        live = {"up": [up_c, up_d], "thumbs": [n_c, n_d]}
        self.store.record_decision(
            f"hand/{version}/{time.time():.3f}", version, "rolled_back", against=against, by="hand", live=live
        )
        return {"version": self.policy.name, "previous": version}

    def _batcher_for_request(self) -> Batcher:
        """The canary's batcher for ``canary_frac`` of the requests, else the deployed version's."""
        from reasoner.online.canary import route_to_candidate

        if self.canary is None or not route_to_candidate(self._route.random(), self.canary_frac):
            return self.batcher
        batcher = self._canary_batcher
        if batcher.queue is None:  # started on the event loop, at its first request
            batcher.start()
        return batcher

    # --- generation ---------------------------------------------------------------------------------------
    def check_model(self, requested: str | None) -> None:
        names = (self.cfg.model_name, self.policy.name)
        if requested is not None and requested not in names:
            raise ServiceError(
                404,
                f"model {requested!r} not found; available: {', '.join(names)}",
                "model",
                "not_found_error",
            )

    def render_chat(self, messages: list[dict]) -> str:
        tok = self.policy.loop_tokenizer
        if not getattr(tok, "chat_template", None):
            raise ServiceError(400, "this model has no chat template: use /v1/completions", "messages")
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def sampling(self, req, prompts: int = 1) -> SamplingParams:
        """The engine's settings for a request (``ChatRequest`` or ``CompletionRequest``) of ``prompts`` prompts."""
        max_tokens = req.max_new_tokens if req.max_new_tokens is not None else self.cfg.default_max_tokens
        if max_tokens > self.cfg.max_tokens_cap:
            param = "max_completion_tokens" if getattr(req, "max_completion_tokens", None) else "max_tokens"
            raise ServiceError(
                422,
                f"{param} must be at most {self.cfg.max_tokens_cap} (serve.max_tokens_cap); got {max_tokens}",
                param,
            )
        if req.n > self.cfg.max_n:
            raise ServiceError(422, f"n must be at most {self.cfg.max_n} (serve.max_n); got {req.n}", "n")
        if prompts * req.n > max(self.cfg.max_n, self.cfg.max_batch):
            limit = max(self.cfg.max_n, self.cfg.max_batch)
            raise ServiceError(
                422,
                f"prompt: {prompts} prompts x n={req.n} is over {limit} completions (serve.max_batch)",
                "prompt",
            )
        return SamplingParams(
            n=req.n, temperature=req.temperature, top_p=req.top_p, max_new_tokens=max_tokens,
            seed=engine_seed(req.seed), logprobs=req.top_k,
        )  # fmt: skip

    def _check_length(self, prompts: list[str], params: SamplingParams, param: str) -> list[int]:
        """Each prompt's token count, checked against the model's positions."""
        limit, counts, tok = self.policy.max_positions, [], self.policy.loop_tokenizer
        for p in prompts:
            n = len(tok(p, add_special_tokens=False)["input_ids"])
            if n == 0:
                raise ServiceError(400, f"{param}: the prompt has no tokens", param)
            if limit is not None and n + params.max_new_tokens > limit:
                raise ServiceError(
                    400,
                    f"{param}: {n} prompt tokens + max_tokens {params.max_new_tokens} exceed the model's {limit} positions",
                    param,
                )
            counts.append(n)
        return counts

    async def generate(
        self, prompts: list[str], params: SamplingParams, stop: list[str], param: str
    ) -> Generated:
        self._check_length(prompts, params, param)
        return await self._batcher_for_request().generate(prompts, params, stop)

    async def stream(self, prompt: str, params: SamplingParams, stop: list[str], param: str) -> TokenStream:
        """The request's ``TokenStream``; its ``prompt_tokens`` is the prompt's token count."""
        (count,) = self._check_length([prompt], params, param)
        stream = await self._batcher_for_request().stream(prompt, params, stop)
        stream.prompt_tokens = count
        return stream

    async def record(
        self,
        kind: str,
        prompt: str,
        version: str,
        choices: list[Choice],
        req,
        messages=None,
        completion_id: str | None = None,
    ) -> str:
        """Store one prompt's completions (committed before the response goes out); returns the completion id."""
        sampling = {
            "n": req.n, "temperature": req.temperature, "top_p": req.top_p,
            "max_tokens": req.max_new_tokens if req.max_new_tokens is not None else self.cfg.default_max_tokens,
            "seed": req.seed, "stop": req.stop,
        }  # fmt: skip
        return await self._committed(
            self.store.submit_completion(
                prompt=prompt,
                texts=[c.text for c in choices],
                finish_reasons=[c.finish_reason for c in choices],
                logprobs=[
                    None if c.logprobs is None else {"token_ids": c.token_ids, "logprobs": c.logprobs}
                    for c in choices
                ],
                version=version,
                sampling=sampling,
                messages=messages,
                user=req.user,
                kind=kind,
                completion_id=completion_id,
            )
        )

    @staticmethod
    async def _committed(future):
        """Wait for a store write without holding a thread: the event loop serves others meanwhile."""
        return await asyncio.wrap_future(future)

    # --- feedback -----------------------------------------------------------------------------------------
    async def feedback(self, body, idempotency_key: str | None) -> dict:
        from reasoner.serve import bodies
        from reasoner.serve.store import IdempotencyConflict, NotFound

        if isinstance(body, bodies.RatingFeedback):
            kind, refs, field = "rating", [body.response], "response"
        elif isinstance(body, bodies.ChoiceFeedback):
            kind, refs, field = "choice", [body.chosen, body.rejected], "rejected"
        elif isinstance(body, bodies.TieFeedback):
            kind, refs, field = "tie", body.responses, "responses"
        else:
            kind, refs, field = "ranking", body.ranking, "ranking"
        pairs = [(r.completion_id, r.choice) for r in refs]
        if len(set(pairs)) != len(pairs):
            raise ServiceError(422, f"{field}: the same response appears twice", field)
        digest = hashlib.sha256(json.dumps(body.model_dump(), sort_keys=True).encode()).hexdigest()
        try:
            return await self._committed(
                self.store.submit_feedback(
                    kind,
                    pairs,
                    rating=getattr(body, "rating", None),
                    reason=body.reason,
                    comment=body.comment,
                    both_bad=getattr(body, "both_bad", False),
                    user=body.user,
                    idempotency_key=idempotency_key,
                    body_hash=digest,
                )
            )
        except NotFound as e:
            raise ServiceError(404, str(e), field, "not_found_error") from e
        except IdempotencyConflict as e:
            raise ServiceError(409, str(e), "Idempotency-Key") from e
        except ValueError as e:
            raise ServiceError(422, f"{field}: {e}", field) from e

    def stats(self) -> dict:
        return {**self.store.stats(), "deployed": self.policy.name}

    def canary_status(self) -> dict:
        c = self.canary
        return {
            "deployed": self.policy.name,
            "canary": c.name if c else None,
            "frac": self.canary_frac if c else 0.0,
        }


def _next_version(store: FeedbackStore) -> str:
    taken = {v["name"] for v in store.versions()}
    i = len(taken)
    while f"v{i}" in taken:
        i += 1
    return f"v{i}"


def engine_seed(seed: int | None) -> int | None:
    """Any integer as a seed the engine takes (0 .. 2**64 - 1): modulo 2**64, so a negative int64 seeds as its
    two's-complement bits and a 64-bit one as itself; larger integers wrap (deterministically).

    >>> engine_seed(7), engine_seed(-1), engine_seed(2**70 + 5), engine_seed(None)
    (7, 18446744073709551615, 5, None)
    """
    return None if seed is None else seed % 2**64


def now() -> int:
    return int(time.time())
