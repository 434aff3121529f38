"""Pydantic models for every request and response body of the server (OpenAI-compatible where OpenAI has one)."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    field_validator,
    model_validator,
)


def _no_nul(v: str) -> str:
    # PostgreSQL's text cannot hold NUL: refused alike on every store rather than a 500 on one of them
    if "\x00" in v:
        raise ValueError("NUL characters (\\u0000) are not accepted")
    return v


NoNul = AfterValidator(_no_nul)
Text = Annotated[str, Field(max_length=100_000), NoNul]
Short = Annotated[str, Field(max_length=256), NoNul]
Comment = Annotated[str, Field(max_length=10_000), NoNul]


class _Open(BaseModel):
    # OpenAI's parameters that this server does not implement land in ``model_extra``: the route refuses them
    # (400, ``refusal``) unless they ask for nothing; a field that is not OpenAI's is refused as OpenAI does
    model_config = ConfigDict(extra="allow")

    @model_validator(mode="before")
    @classmethod
    def _nulls_are_defaults(cls, data):
        """``"field": null`` means the default, as OpenAI reads it (LangChain and others send nulls)."""
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if not (v is None and k in cls.model_fields)}
        return data


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Message(_Open):
    role: Literal["system", "user", "assistant"]  # "developer" (newer OpenAI clients) is read as "system"
    content: Text = ""  # a list of content parts is joined: its text parts, one per line
    name: Short | None = None  # a participant's name: accepted, not shown to the model

    @field_validator("role", mode="before")
    @classmethod
    def _developer(cls, v):
        return "system" if v == "developer" else v

    @field_validator("content", mode="before")
    @classmethod
    def _parts(cls, v):
        if not isinstance(v, list):
            return v
        texts = []
        for i, part in enumerate(v):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind != "text" or not isinstance(part.get("text"), str):
                shown = f"type {kind!r}" if kind is not None else "no type"
                raise ValueError(
                    f"content part {i} has {shown}: only text parts ({{'type': 'text', 'text': ...}}) are supported"
                )
            texts.append(part["text"])
        return "\n".join(texts)


class StreamOptions(_Strict):
    include_usage: bool = False  # a last chunk with no choices and the request's usage
    include_obfuscation: bool = True  # OpenAI's padding of chunks against side channels: nothing to pad here


class _Sampling(_Open):
    model: Short | None = None  # None = the stable name
    n: int = Field(1, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    seed: int | None = None  # any integer: the engine gets it modulo 2**64 (a negative int64 as its bits)
    stop: str | list[Short] | None = Field(None, validate_default=True)  # always a list once validated
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: Short | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop must be at most 4 non-empty strings")
        return stops


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1, max_length=256)
    max_completion_tokens: int | None = Field(
        None, ge=1
    )  # newer clients' max_tokens (it wins over max_tokens)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)  # needs logprobs: true

    @property
    def top_k(self) -> int | None:
        """The top log-probs to report per token; None: no log-probs."""
        return (self.top_logprobs or 0) if self.logprobs else None

    @property
    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(_Sampling):
    # a string or a list of strings (each its own choices); a list of one is the same as its string
    prompt: list[Annotated[str, Field(min_length=1, max_length=100_000), NoNul]] = Field(min_length=1)
    logprobs: int | None = Field(None, ge=0, le=5)  # the top log-probs per token, as OpenAI's legacy API

    @property
    def top_k(self) -> int | None:
        return self.logprobs

    @property
    def max_new_tokens(self) -> int | None:
        return self.max_tokens

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompts(cls, v):
        v = [v] if isinstance(v, str) else v
        if not isinstance(v, list) or not all(isinstance(p, str) for p in v):
            raise ValueError(
                "prompt must be a string or a list of strings (token-id prompts are not supported)"
            )
        if "" in v:
            raise ValueError("a prompt is empty: send at least one character")
        return v


# --- what the server does not do: refused by name (400), not silently ignored ----------------------------
# OpenAI's request parameters this server does not implement, each with the values that ask for nothing (the
# defaults clients send): those are accepted, any other value answers 400 naming the parameter.
_OFF = (None, False, 0, 0.0, {}, [], "")
NOT_SUPPORTED = {
    "chat": {
        "tools": _OFF, "tool_choice": (*_OFF, "none"), "functions": _OFF, "function_call": (*_OFF, "none"),
        "parallel_tool_calls": _OFF, "response_format": (*_OFF, {"type": "text"}), "logit_bias": _OFF,
        "frequency_penalty": _OFF, "presence_penalty": _OFF, "audio": _OFF, "modalities": (*_OFF, ["text"]),
        "prediction": _OFF, "reasoning_effort": _OFF, "verbosity": _OFF, "web_search_options": _OFF,
    },
    "text": {
        "echo": _OFF, "suffix": _OFF, "logit_bias": _OFF, "frequency_penalty": _OFF, "presence_penalty": _OFF,
        "best_of": (*_OFF, 1),
    },
}  # fmt: skip
# OpenAI's parameters that change nothing in what is generated: accepted and not used
IGNORED = {"metadata", "store", "service_tier", "prompt_cache_key", "safety_identifier"}
# a message's fields beside role, content and name, accepted only when they say nothing (an assistant message
# sent back as the client received it has them all null)
MESSAGE_OFF = {"tool_calls": _OFF, "function_call": _OFF, "audio": _OFF, "refusal": _OFF, "annotations": _OFF}


def refusal(req: _Sampling, kind: str) -> tuple[str, str] | None:
    """``(param, message)`` for the first thing in ``req`` this server does not do; None if it does it all.

    >>> refusal(ChatRequest(messages=[{"role": "user", "content": "hi"}], tools=[{"type": "function"}]), "chat")
    ('tools', 'tools is not supported by this server: leave it out')
    >>> refusal(ChatRequest(messages=[{"role": "user", "content": "hi"}], response_format={"type": "json_object"}), "chat")[1]
    'response_format is not supported by this server: leave it out, or send {"type": "text"}'

    >>> refusal(ChatRequest(messages=[{"role": "user", "content": "hi"}], temprature=1), "chat")[1]
    'Unrecognized request argument supplied: temprature'
    """
    for name, value in (req.model_extra or {}).items():
        off = NOT_SUPPORTED[kind].get(name)
        if name == "best_of" and value == req.n and type(value) is int:
            continue  # best of n among n: the n themselves
        if off is not None:
            if not _says_nothing(value, off):
                also = " or ".join(json.dumps(v) for v in off[len(_OFF) :])
                return name, f"{name} is not supported by this server: leave it out" + (
                    f", or send {also}" if also else ""
                )
        elif name not in IGNORED:
            return name, f"Unrecognized request argument supplied: {name}"
    for i, m in enumerate(getattr(req, "messages", [])):
        for name, value in (m.model_extra or {}).items():
            if name not in MESSAGE_OFF:
                return f"messages.{i}.{name}", f"messages.{i}: unrecognized message field {name!r}"
            if not _says_nothing(value, MESSAGE_OFF[name]):
                return f"messages.{i}.{name}", f"messages.{i}.{name} is not supported by this server"
    if kind == "chat" and req.top_logprobs is not None and not req.logprobs:
        return "top_logprobs", "top_logprobs needs logprobs: true"
    if req.stream_options is not None and not req.stream:
        return "stream_options", "stream_options is only allowed when stream is true"
    return None


def _says_nothing(value, off: tuple) -> bool:
    return any(value == o and type(value) is type(o) for o in off) or value is None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "reasoner"
    root: str  # the version this name routes to


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None  # the token's UTF-8 bytes


class TokenLogprobOut(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[TokenLogprobOut] | None
    refusal: list[TokenLogprobOut] | None = None


class ChatChoice(BaseModel):
    index: int
    message: ChatMessageOut
    finish_reason: Literal["stop", "length"]
    logprobs: ChatLogprobs | None = None


class ChatResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str  # the version that answered, e.g. v0
    choices: list[ChatChoice]
    usage: Usage


class TextLogprobs(BaseModel):
    """OpenAI's legacy completions shape: per token its text, log-prob, top alternatives and character offset
    in the completion's text."""

    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class TextChoice(BaseModel):
    index: int  # prompt index * n + choice, as OpenAI numbers a list of prompts
    text: str
    finish_reason: Literal["stop", "length"]
    logprobs: TextLogprobs | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[TextChoice]
    usage: Usage


# --- feedback ---------------------------------------------------------------------------------------------
class Ref(_Strict):
    completion_id: Short
    choice: int = Field(0, ge=0)


class RatingFeedback(_Strict):
    response: Ref
    rating: Literal[1, -1]
    reason: Short | None = None
    comment: Comment | None = None
    user: Short | None = None


class ChoiceFeedback(_Strict):
    chosen: Ref
    rejected: Ref
    reason: Short | None = None
    comment: Comment | None = None
    user: Short | None = None


class TieFeedback(_Strict):
    responses: list[Ref] = Field(min_length=2, max_length=2)
    tie: Literal[True]
    both_bad: bool = False  # the arena's "both bad": a tie that says neither answer is good
    reason: Short | None = None
    comment: Comment | None = None
    user: Short | None = None


class RankingFeedback(_Strict):
    ranking: list[Ref] = Field(min_length=2, max_length=16)  # best first
    reason: Short | None = None
    comment: Comment | None = None
    user: Short | None = None


def feedback_kind(body: Any) -> str | None:
    """Which feedback shape a body is, by its keys (rating | choice | tie | ranking)."""
    if not isinstance(body, dict):
        return None
    for key, kind in (
        ("rating", "rating"),
        ("response", "rating"),
        ("chosen", "choice"),
        ("rejected", "choice"),
    ):
        if key in body:
            return kind
    if "ranking" in body:
        return "ranking"
    if "responses" in body or "tie" in body:
        return "tie"
    return None


Feedback = Annotated[
    Annotated[RatingFeedback, Tag("rating")]
    | Annotated[ChoiceFeedback, Tag("choice")]
    | Annotated[TieFeedback, Tag("tie")]
    | Annotated[RankingFeedback, Tag("ranking")],
    Discriminator(
        feedback_kind,
        custom_error_type="feedback_kind",
        custom_error_message="feedback must have one of: response+rating, chosen+rejected, responses+tie, ranking",
    ),
]


def inline_refs(schema: dict) -> dict:
    """``schema`` with each ``$ref`` replaced by its ``$defs`` entry: an OpenAPI document resolves refs against
    itself, not against the schema that holds them (the models here are not recursive).

    >>> inline_refs({"$defs": {"A": {"type": "integer"}}, "properties": {"a": {"$ref": "#/$defs/A"}}})
    {'properties': {'a': {'type': 'integer'}}}
    """
    defs = schema.get("$defs", {})

    def sub(node):
        if isinstance(node, dict):
            if "$ref" in node:
                return sub(defs[node["$ref"].rsplit("/", 1)[1]])
            return {k: sub(v) for k, v in node.items() if k != "$defs"}
        return [sub(v) for v in node] if isinstance(node, list) else node

    return sub(schema)


FEEDBACK = TypeAdapter(Feedback)  # validates a body straight from its JSON bytes (the route skips FastAPI's)
FEEDBACK_SCHEMA = inline_refs(FEEDBACK.json_schema())


class FeedbackCreated(BaseModel):
    id: str
    created: bool  # False: an idempotent retry of an earlier post


class DeployRequest(_Strict):
    path: Text
    version: Short | None = None  # None = the next vN


class RollbackRequest(_Strict):
    version: Short  # a version in its canary, or the deployed one (its parent is served again)


class DeployResponse(BaseModel):
    version: str
    previous: str | None


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    version: str
    model: str


class VersionStats(BaseModel):
    version: str
    served: int
    up: int
    down: int
    wins: int
    losses: int
    ties: int
    thumbs_up_rate: float | None
    win_rate: float | None
    rating: float | None  # None until the version has been compared with another
    rating_ci95: list[float] | None


class StatsResponse(BaseModel):
    versions: list[VersionStats]
    comparisons: int
    feedback_rows: int
    deployed: str
