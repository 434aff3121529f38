"""Pydantic models for every request and response body of the server (OpenAI-compatible where OpenAI has one)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, TypeAdapter, field_validator

Text = Annotated[str, Field(max_length=100_000)]
Short = Annotated[str, Field(max_length=256)]
Comment = Annotated[str, Field(max_length=10_000)]


class _Open(BaseModel):
    model_config = ConfigDict(
        extra="ignore"
    )  # OpenAI clients send fields we do not use (e.g. logprobs=False)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Message(_Open):
    role: Literal["system", "user", "assistant"]
    content: Text


class _Sampling(_Open):
    model: Short | None = None  # None = the stable name
    n: int = Field(1, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    seed: int | None = None
    stop: str | list[Short] | None = Field(None, validate_default=True)  # always a list once validated
    stream: bool = False
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


class CompletionRequest(_Sampling):
    prompt: Text | list[Text]


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


class ChatChoice(BaseModel):
    index: int
    message: ChatMessageOut
    finish_reason: Literal["stop", "length"]


class ChatResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str  # the version that answered, e.g. v0
    choices: list[ChatChoice]
    usage: Usage


class TextChoice(BaseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length"]


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
