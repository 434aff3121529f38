"""The FastAPI app: routes only (validate, translate, call the service). One router per concern.

- ``/health``; ``/v1/models``, ``/v1/chat/completions``, ``/v1/completions`` (OpenAI-compatible)
- ``/v1/feedback``, ``/v1/stats``
- ``/admin/deploy`` (hot swap), ``/admin/rollback`` and ``/admin/canary`` (need ``serve.admin_key``)
- ``/`` and ``/static/*``: the web page
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from reasoner.serve import bodies
from reasoner.serve.logprobs import chat_logprobs, text_logprobs
from reasoner.serve.service import ServeService, ServiceError, now
from reasoner.serve.store import new_completion_id

STATIC = Path(__file__).parent / "static"
log = logging.getLogger("reasoner.serve")
FEEDBACK_TAGS = {"rating", "choice", "tie", "ranking"}
CSP = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"


def _error(status: int, message: str, param: str | None = None, type: str = "invalid_request_error", **extra):
    return JSONResponse(
        {"error": {"message": message, "type": type, "param": param, "code": status}, **extra},
        status_code=status,
    )


def _bearer(authorization: str | None) -> str | None:
    if authorization and authorization[:7].lower() == "bearer ":
        return authorization[7:].strip()
    return None


async def service(request: Request) -> ServeService:  # async: FastAPI runs sync dependencies on a thread
    return request.app.state.service


Service = Annotated[ServeService, Depends(service)]


async def require_admin_key(svc: Service, authorization: Annotated[str | None, Header()] = None) -> None:
    key = svc.cfg.admin_key
    if key is None:
        raise ServiceError(
            403, "the admin route is off: start the server with serve.admin_key=KEY", None, "permission_error"
        )
    if not secrets.compare_digest((_bearer(authorization) or "").encode(), key.encode()):
        raise ServiceError(
            401,
            "missing or wrong admin key: send 'Authorization: Bearer ADMIN_KEY'",
            "Authorization",
            "authentication_error",
        )


# --- OpenAI-compatible ----------------------------------------------------------------------------------------
openai_router = APIRouter(prefix="/v1")  # behind ApiKeyAuth


@openai_router.get("/models", response_model=bodies.ModelList)
def list_models(svc: Service):
    v = svc.policy.name
    return bodies.ModelList(
        data=[
            bodies.ModelCard(id=svc.cfg.model_name, created=now(), root=v),
            bodies.ModelCard(id=v, created=now(), root=v),
        ]
    )


def _refuse_unsupported(req, kind: str) -> None:
    """What the server does not do answers 400 naming the parameter, as OpenAI does: never silently ignored."""
    refused = bodies.refusal(req, kind)
    if refused is not None:
        raise ServiceError(400, refused[1], refused[0])


@openai_router.post("/chat/completions", response_model=bodies.ChatResponse)
async def chat_completions(req: bodies.ChatRequest, svc: Service):
    _refuse_unsupported(req, "chat")
    svc.check_model(req.model)
    messages = [{"role": m.role, "content": m.content} for m in req.messages]
    prompt = svc.render_chat(messages)
    params = svc.sampling(req)
    if req.stream:
        stream = await svc.stream(prompt, params, req.stop, "messages")
        return _event_stream(svc, [stream], "chat", [prompt], req, messages)
    gen = await svc.generate([prompt], params, req.stop, "messages")
    choices = gen.choices[0]
    cid = await svc.record("chat", prompt, gen.version, choices, req, messages)
    usage = _usage(gen.prompt_tokens, [choices])
    return bodies.ChatResponse(
        id=cid,
        created=now(),
        model=gen.version,
        choices=[
            bodies.ChatChoice(
                index=i,
                message=bodies.ChatMessageOut(content=c.text),
                finish_reason=c.finish_reason,
                logprobs=None if c.entries is None else chat_logprobs(c.entries),
            )
            for i, c in enumerate(choices)
        ],
        usage=usage,
    )


@openai_router.post("/completions", response_model=bodies.CompletionResponse)
async def completions(req: bodies.CompletionRequest, svc: Service):
    _refuse_unsupported(req, "text")
    svc.check_model(req.model)
    prompts = req.prompt
    params = svc.sampling(req, len(prompts))
    if req.stream:
        streams = []
        try:
            for p in prompts:
                streams.append(await svc.stream(p, params, req.stop, "prompt"))
        except ServiceError:
            for stream in streams:  # a later prompt refused: the earlier ones' rows stop
                stream.cancel()
            raise
        return _event_stream(svc, streams, "text", prompts, req)
    gen = await svc.generate(prompts, params, req.stop, "prompt")
    # Each prompt's answers are stored as a completion of their own (feedback compares answers to one prompt):
    # the response's id for one prompt, f"{id}-{i}" for prompt i of several (a REF names choice index % n).
    cid = new_completion_id("text")
    ids = [cid] if len(prompts) == 1 else [f"{cid}-{i}" for i in range(len(prompts))]
    await asyncio.gather(*(svc.record("text", p, gen.version, c, req, completion_id=i)
                           for p, c, i in zip(prompts, gen.choices, ids, strict=True)))  # fmt: skip
    return bodies.CompletionResponse(
        id=cid,
        created=now(),
        model=gen.version,
        choices=[
            bodies.TextChoice(
                index=j * req.n + i,
                text=c.text,
                finish_reason=c.finish_reason,
                logprobs=None if c.entries is None else text_logprobs(c.entries),
            )
            for j, flat in enumerate(gen.choices)
            for i, c in enumerate(flat)
        ],
        usage=_usage(gen.prompt_tokens, gen.choices),
    )


def _usage(prompt_tokens: list[int], choices: list[list]) -> bodies.Usage:
    """A request's usage from each prompt's token count and each prompt's choices."""
    prompt, completion = sum(prompt_tokens), sum(c.completion_tokens for cs in choices for c in cs)
    return bodies.Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def _sse(data: dict) -> str:
    return f"data: {json.dumps(data)}\n\n"


def _event_stream(
    svc: ServeService, streams: list, kind: str, prompts: list[str], req, messages=None
) -> StreamingResponse:
    """``stream: true``: server-sent events in OpenAI's chunk format, each delta as soon as the shared decode
    makes it final (reasoner.serve.decode). The completion is committed to the store before the chunks that
    carry ``finish_reason``, so its id is good for feedback by then; a client that leaves stops its own rows.

    Several prompts (``/v1/completions`` with a list) decode together, one ``TokenStream`` each; their chunks go
    out prompt after prompt (a later prompt's wait in its stream meanwhile), choice ``j * n + c`` for choice
    ``c`` of prompt ``j``, and each prompt is stored as its own completion (``{id}-{j}``).
    """
    chat, n = kind == "chat", req.n
    cid = new_completion_id(kind)
    ids = [cid] if len(prompts) == 1 else [f"{cid}-{j}" for j in range(len(prompts))]
    offsets = [0] * (len(prompts) * n)  # characters sent per choice: the legacy log-probs' text_offset

    def chunk(base: dict, index: int, text: str | None, finish: str | None = None, role: bool = False,
              entries=None) -> str:  # fmt: skip
        if chat:
            delta = (
                {"role": "assistant", "content": ""} if role else ({} if text is None else {"content": text})
            )
            choice = {"index": index, "delta": delta, "finish_reason": finish}
            if entries is not None:
                choice["logprobs"] = chat_logprobs(entries)
            return _sse({**base, "choices": [choice]})
        choice = {"index": index, "text": text or "", "finish_reason": finish}
        if entries is not None:
            choice["logprobs"] = text_logprobs(entries, offsets[index])
        offsets[index] += len(text or "")
        return _sse({**base, "choices": [choice]})

    async def events():
        try:
            versions = [(await _next(streams[0]))[1]]  # the policy version of the first prompt's batch
            base = {"id": cid, "object": "chat.completion.chunk" if chat else "text_completion"}
            base.update(created=now(), model=versions[0])
            if chat:
                for i in range(n):
                    yield chunk(base, i, None, role=True)
            choices = []
            for j, stream in enumerate(streams):
                if j > 0:
                    versions.append((await _next(stream))[1])
                done: dict = {}
                while len(done) < n:
                    event = await _next(stream)
                    if event[0] == "text":
                        yield chunk(base, j * n + event[1], event[2], entries=event[3])
                    else:
                        done[event[1]] = event[2]
                choices.append([done[i] for i in range(n)])
            for p, v, cs, i in zip(prompts, versions, choices, ids, strict=True):
                await svc.record(kind, p, v, cs, req, messages, completion_id=i)
            for j, cs in enumerate(choices):
                for i, c in enumerate(cs):
                    yield chunk(base, j * n + i, None, c.finish_reason)
            if req.stream_options is not None and req.stream_options.include_usage:
                usage = _usage([s.prompt_tokens for s in streams], choices).model_dump()
                yield _sse({**base, "choices": [], "usage": usage})
            yield "data: [DONE]\n\n"
        except GenerationFailed as e:  # the 200 has gone out: the error goes into the stream
            log.error("streaming %s failed: %s", cid, e.__cause__)
            yield _sse({"error": {"message": str(e), "type": "server_error", "param": None, "code": 500}})
        finally:
            for stream in streams:  # a client that went away stops decoding its rows; the batch goes on
                stream.cancel()

    # no-cache, and no buffering by a reverse proxy (nginx holds SSE back otherwise): each chunk as it comes
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


class GenerationFailed(Exception):
    """The shared generate call of a streaming request raised."""


async def _next(stream) -> tuple:
    event = await stream.events.get()
    if event[0] == "error":
        raise GenerationFailed(f"generation failed: {event[1]}") from event[1]
    return event


# --- feedback -------------------------------------------------------------------------------------------------
feedback_router = APIRouter(prefix="/v1")  # behind ApiKeyAuth


class RawRoute(APIRoute):
    """A route whose endpoint takes the ``Request`` and returns a ``Response`` itself, validating and answering with
    the pydantic models of ``bodies``: listed in the OpenAPI document like any route, without FastAPI's
    per-request parameter resolution and response serialisation (measured: 40% of the feedback route's CPU).
    """

    def get_route_handler(self):
        return self.endpoint


async def post_feedback(request: Request) -> Response:
    try:
        body = bodies.FEEDBACK.validate_json(await request.body())
    except ValidationError as e:
        raise RequestValidationError([{**err, "loc": ("body", *err["loc"])} for err in e.errors()]) from None
    key = request.headers.get("idempotency-key")
    if key is not None and len(key) > 256:
        raise ServiceError(422, "Idempotency-Key: at most 256 characters", "Idempotency-Key")
    created = await request.app.state.service.feedback(body, key)  # committed before the 201 goes out
    return Response(bodies.FeedbackCreated(**created).model_dump_json(), 201, media_type="application/json")


# the route many writers hit at once
feedback_router.add_api_route(
    "/feedback",
    post_feedback,
    methods=["POST"],
    status_code=201,
    response_model=bodies.FeedbackCreated,
    route_class_override=RawRoute,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": bodies.FEEDBACK_SCHEMA}},
        },
        "parameters": [
            {"name": "Idempotency-Key", "in": "header", "schema": {"type": "string", "maxLength": 256}}
        ],
    },
)


@feedback_router.get("/stats", response_model=bodies.StatsResponse)
def get_stats(svc: Service):
    return svc.stats()


# --- admin ----------------------------------------------------------------------------------------------------
admin_router = APIRouter(prefix="/admin", dependencies=[Depends(require_admin_key)])


@admin_router.post("/deploy", response_model=bodies.DeployResponse)
def deploy(req: bodies.DeployRequest, svc: Service):
    previous = svc.policy.name
    return bodies.DeployResponse(version=svc.deploy(req.path, req.version), previous=previous)


@admin_router.post("/rollback", response_model=bodies.DeployResponse)
def rollback(req: bodies.RollbackRequest, svc: Service):
    """End a version's canary, or give the deployed version's place back to its parent (recorded by hand)."""
    return bodies.DeployResponse(**svc.rollback(req.version))


@admin_router.get("/canary")
def canary(svc: Service) -> dict:
    return svc.canary_status()


# --- health and the page --------------------------------------------------------------------------------------
page_router = APIRouter()


@page_router.get("/health", response_model=bodies.Health)
def health(svc: Service):
    return bodies.Health(version=svc.policy.name, model=svc.cfg.model_name)


@page_router.get("/", include_in_schema=False)
def index():
    return FileResponse(STATIC / "index.html", media_type="text/html")


# --- the app --------------------------------------------------------------------------------------------------
class BodyLimit:
    """Answer 413 to a request body over ``limit`` bytes (declared by Content-Length or counted as it arrives)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        too_big = _error(
            413, f"request body over {self.limit} bytes (serve.max_body_bytes)", type="request_too_large"
        )
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await too_big(scope, receive, send)
        if declared is None and scope["method"] in ("POST", "PUT", "PATCH"):
            chunks, size, more = [], 0, True
            while more:  # a chunked body: read it up to the limit, then replay it
                message = await receive()
                if message["type"] != "http.request":
                    break
                chunks.append(message.get("body", b""))
                size += len(chunks[-1])
                more = message.get("more_body", False)
                if size > self.limit:
                    return await too_big(scope, receive, send)
            body, done = b"".join(chunks), False

            async def replay():
                nonlocal done
                if done:
                    return await receive()
                done = True
                return {"type": "http.request", "body": body, "more_body": False}

            return await self.app(scope, replay, send)
        return await self.app(scope, receive, send)


class ApiKeyAuth:
    """With ``serve.api_key`` set, every ``/v1`` request needs ``Authorization: Bearer KEY`` (401 otherwise).

    A middleware rather than a router dependency: it covers any ``/v1`` route, present or future, and costs a
    header lookup where FastAPI's dependency resolution cost a fifth of a feedback post's CPU.
    """

    def __init__(self, app, key: str | None):
        self.app, self.key = app, None if key is None else key.encode()

    async def __call__(self, scope, receive, send):
        if self.key is not None and scope["type"] == "http" and scope["path"].startswith("/v1"):
            given = ""
            for name, value in scope["headers"]:
                if name == b"authorization":
                    given = _bearer(value.decode("latin-1")) or ""
            if not secrets.compare_digest(given.encode(), self.key):
                denied = _error(
                    401,
                    "missing or wrong API key: send 'Authorization: Bearer KEY'",
                    "Authorization",
                    "authentication_error",
                )
                return await denied(scope, receive, send)
        return await self.app(scope, receive, send)


class SecurityHeaders:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        async def with_headers(message):
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] += [
                    (b"content-security-policy", CSP.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                ]
            await send(message)

        return await self.app(scope, receive, with_headers if scope["type"] == "http" else send)


# the member of a union that pydantic names in an error's location (``stop.list[str]``): not a field
_UNION_BRANCH = re.compile(r"^(str|int|float|bool|list\[.*\]|constrained-.*|function-.*)$")


def _field(loc: tuple, path: str) -> str:
    parts = [str(p) for p in loc if not _UNION_BRANCH.match(str(p))]
    if parts and parts[0] in ("body", "header", "query"):
        parts = parts[1:]
    if path.endswith("/feedback") and len(parts) > 1 and parts[0] in FEEDBACK_TAGS:
        parts = parts[1:]  # the discriminator's tag, not a field
    return ".".join(parts) or "body"


def create_app(svc: ServeService) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        svc.batcher.start()
        yield
        await svc.batcher.stop()

    app = FastAPI(title="reasoner serve", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service = svc
    for router in (feedback_router, openai_router, admin_router, page_router):  # the busiest first
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, e: ServiceError):
        return _error(e.status, e.message, e.param, e.type)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException):
        # FastAPI's own refusals (a body it cannot parse, say nested past Python's recursion limit; an unknown
        # route) in OpenAI's error shape too
        if e.status_code == 400 and "parsing the body" in str(e.detail):
            return _error(
                400, "body: cannot parse it as JSON (nested too deep, or a number too long?)", "body"
            )
        return _error(
            e.status_code,
            str(e.detail),
            None,
            "invalid_request_error" if e.status_code < 500 else "server_error",
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError):
        errors = e.errors()
        if any(err["type"] == "json_invalid" for err in errors):
            return _error(422, "body: malformed JSON (send one JSON object)", "body")
        fields = [_field(err["loc"], request.url.path) for err in errors]
        message = "; ".join(f"{f}: {err['msg']}" for f, err in zip(fields, errors, strict=True))
        detail = [{"loc": err["loc"], "msg": err["msg"], "type": err["type"]} for err in errors]
        return _error(422, message, fields[0] if fields else None, detail=detail)

    app.add_middleware(BodyLimit, limit=svc.cfg.max_body_bytes)
    app.add_middleware(ApiKeyAuth, key=svc.cfg.api_key)
    app.add_middleware(SecurityHeaders)  # the outermost: every answer carries the headers
    return app
