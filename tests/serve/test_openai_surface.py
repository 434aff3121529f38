"""What OpenAI clients send, over real HTTP with the official ``openai`` client: every supported parameter, plain
and streamed, each response checked against the client's own pydantic types; log-probs in both shapes and in the
store; lists of prompts; and a table of bad and odd bodies, each answered 4xx or 200 (never 5xx) with the
parameter at fault named, the server healthy after."""

from __future__ import annotations

import json
import math

import openai
import pytest
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from tests.serve.conftest import API_KEY

CHAT = [{"role": "user", "content": "What is 2 + 2?"}]


@pytest.fixture
def oai(server):
    return openai.OpenAI(base_url=server[1].url + "/v1", api_key=API_KEY, max_retries=0)


def _plain(create, **kwargs) -> dict:
    """The raw JSON of a non-streamed answer (the client parses without validating: validate it here)."""
    raw = create.with_raw_response.create(**kwargs)
    assert raw.http_response.status_code == 200
    return raw.http_response.json()


def _chunks(create, kind, **kwargs) -> list:
    """A streamed answer's chunks, each validated against the client's chunk type. The legacy ``Completion``
    type requires a finish_reason, which OpenAI's own stream leaves null until a choice ends (the client
    builds chunks without validating): a null one is validated as if it were set."""
    out = []
    for c in create.create(stream=True, **kwargs):
        data = c.to_dict()
        if kind is Completion:
            data["choices"] = [
                {**ch, "finish_reason": ch.get("finish_reason") or "length"} for ch in data["choices"]
            ]
        out.append(kind.model_validate(data))
    return out


# every chat parameter the server implements, with values that exercise it
CHAT_PARAMS = dict(
    model="reasoner", n=2, temperature=0.7, top_p=0.9, max_tokens=12, seed=2**70, stop=["\n\n", "xyz"],
    user="ann", logprobs=True, top_logprobs=3,
)  # fmt: skip
# the parameters it accepts at the values that ask for nothing, as clients send them
CHAT_NOOPS = dict(
    frequency_penalty=0.0, presence_penalty=0, response_format={"type": "text"}, logit_bias={}, tools=[],
    metadata={"k": "v"}, store=False, service_tier="auto",
)  # fmt: skip


def test_every_chat_parameter_plain_and_streamed(server, oai):
    svc, _ = server
    messages = [
        {"role": "developer", "content": "Answer briefly."},
        {
            "role": "user",
            "content": [{"type": "text", "text": "What is"}, {"type": "text", "text": "2 + 2?"}],
        },
        {"role": "assistant", "content": "4", "refusal": None, "tool_calls": None, "name": "bot"},
        {"role": "user", "content": "And 3 + 3?", "name": "ann"},
    ]
    body = _plain(oai.chat.completions, messages=messages, **CHAT_PARAMS, **CHAT_NOOPS)
    r = ChatCompletion.model_validate(body)
    assert r.object == "chat.completion" and r.model == "v0" and len(r.choices) == 2
    stored = svc.store.completion(r.id)
    assert stored["prompt"].startswith("system: Answer briefly.\nuser: What is\n2 + 2?\nassistant: 4\n")
    assert stored["messages"][0] == {"role": "system", "content": "Answer briefly."}
    for c in r.choices:
        entries = c.logprobs.content
        assert "".join(e.token for e in entries) == c.message.content
        assert all(
            len(e.top_logprobs) == 3 and e.logprob <= 0 and bytes(e.bytes).decode() == e.token
            for e in entries
        )
        behaviour = stored["choices"][c.index]["logprobs"]
        assert behaviour["logprobs"][: len(entries)] == [
            e.logprob for e in entries
        ]  # + the EOS's, if it ended so
        assert len(behaviour["token_ids"]) == len(behaviour["logprobs"]) >= len(entries)
    again = ChatCompletion.model_validate(_plain(oai.chat.completions, messages=messages, **CHAT_PARAMS))
    assert [c.message.content for c in again.choices] == [c.message.content for c in r.choices]  # seed 2**70

    chunks = _chunks(oai.chat.completions, ChatCompletionChunk, messages=messages, **CHAT_PARAMS,
                     stream_options={"include_usage": True})  # fmt: skip
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    for i in range(2):
        mine = [c.choices[0] for c in chunks if c.choices and c.choices[0].index == i]
        text = "".join(c.delta.content or "" for c in mine)
        entries = [e for c in mine if c.logprobs for e in c.logprobs.content]
        assert "".join(e.token for e in entries) == text and mine[-1].finish_reason in ("stop", "length")
        assert svc.store.completion(chunks[0].id)["choices"][i]["text"] == text


def test_greedy_logprobs_are_the_same_streamed_or_not(oai):
    kwargs = dict(model="reasoner", messages=CHAT, max_completion_tokens=10, temperature=0, logprobs=True)
    plain = ChatCompletion.model_validate(_plain(oai.chat.completions, **kwargs))
    chunks = _chunks(oai.chat.completions, ChatCompletionChunk, **kwargs)
    streamed = [
        e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content
    ]
    entries = plain.choices[0].logprobs.content
    assert [e.token for e in streamed] == [e.token for e in entries] and len(entries) > 0
    assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in entries], abs=1e-5)
    assert all(e.top_logprobs == [] for e in entries)  # top_logprobs unset: the sampled token's only
    # greedy: the model's own distribution, of which the sampled token is the most likely
    top = ChatCompletion.model_validate(_plain(oai.chat.completions, **kwargs, top_logprobs=2))
    assert all(e.top_logprobs[0].logprob == pytest.approx(e.logprob) for e in top.choices[0].logprobs.content)
    none = ChatCompletion.model_validate(_plain(oai.chat.completions, **{**kwargs, "logprobs": False}))
    assert none.choices[0].logprobs is None


def test_text_completions_with_logprobs_plain_and_streamed(server, oai):
    svc, _ = server
    kwargs = dict(model="reasoner", prompt="12 + 7 = ", max_tokens=8, temperature=0.0, logprobs=2, n=1,
                  echo=False, best_of=1, seed=-5)  # fmt: skip
    r = Completion.model_validate(_plain(oai.completions, **kwargs))
    lp = r.choices[0].logprobs
    assert "".join(lp.tokens) == r.choices[0].text and len(lp.tokens) == len(lp.token_logprobs) > 0
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
    assert all(len(top) <= 2 and max(top.values()) == pytest.approx(v) for top, v in
               zip(lp.top_logprobs, lp.token_logprobs, strict=True))  # fmt: skip
    assert (
        svc.store.completion(r.id)["choices"][0]["logprobs"]["logprobs"][: len(lp.tokens)]
        == lp.token_logprobs
    )
    chunks = _chunks(oai.completions, Completion, **kwargs)
    streamed = [c.choices[0].logprobs for c in chunks if c.choices and c.choices[0].logprobs]
    assert [t for s in streamed for t in s.tokens] == lp.tokens
    assert [o for s in streamed for o in s.text_offset] == lp.text_offset  # offsets go on across chunks


def test_a_list_of_prompts_gets_each_its_choices_numbered_as_openai_does(server, oai, client):
    svc, _ = server
    prompts = ["1 + 1 = ", "22 * 3 = ", "7 - 2 = "]
    r = Completion.model_validate(
        _plain(oai.completions, model="reasoner", prompt=prompts, n=2, max_tokens=6, temperature=0.0)
    )
    assert [c.index for c in r.choices] == list(range(6))
    one = [oai.completions.create(model="reasoner", prompt=p, max_tokens=6, temperature=0.0) for p in prompts]
    assert [c.text for c in r.choices] == [o.choices[0].text for o in one for _ in range(2)]  # prompt-major
    assert r.usage.prompt_tokens == sum(o.usage.prompt_tokens for o in one)
    for i, p in enumerate(prompts):  # each prompt is its own completion in the store: {id}-{i}
        stored = svc.store.completion(f"{r.id}-{i}")
        assert (
            stored["prompt"] == p and [c["text"] for c in stored["choices"]] == [one[i].choices[0].text] * 2
        )
    rated = client.post(
        "/v1/feedback", json={"response": {"completion_id": f"{r.id}-2", "choice": 1}, "rating": 1}
    )
    assert rated.status_code == 201
    streamed = _chunks(oai.completions, Completion, model="reasoner", prompt=prompts, n=2, max_tokens=6,
                       temperature=0.0, logprobs=1, stream_options={"include_usage": True})  # fmt: skip
    texts: dict[int, str] = {}
    for c in streamed:
        for ch in c.choices:
            texts[ch.index] = texts.get(ch.index, "") + ch.text
            if ch.logprobs:
                assert "".join(ch.logprobs.tokens) == ch.text
    assert texts == {c.index: c.text for c in r.choices}
    assert streamed[-1].usage.prompt_tokens == r.usage.prompt_tokens
    assert svc.store.completion(f"{streamed[0].id}-1")["prompt"] == prompts[1]
    single = client.post("/v1/completions", json={"prompt": ["1 + 1 = "], "max_tokens": 3}).json()
    assert svc.store.completion(single["id"])["prompt"] == "1 + 1 = "  # a list of one: the id itself


OK = 200
# (endpoint, body, status, param the error names). Each: 200, or a 4xx naming the parameter; never a 5xx.
SWEEP = [
    ("chat", {"seed": 2**70}, OK, None),
    ("chat", {"seed": -(2**63)}, OK, None),
    ("chat", {"seed": 10**40}, OK, None),
    ("chat", {"seed": "abc"}, 422, "seed"),
    ("chat", {"seed": 1.5}, 422, "seed"),
    ("chat", {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}, OK, None),
    ("chat", {"messages": [{"role": "user", "content": []}]}, OK, None),
    (
        "chat",
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
        422,
        "messages.0.content",
    ),
    ("chat", {"messages": [{"role": "user", "content": [{"type": "text"}]}]}, 422, "messages.0.content"),
    ("chat", {"messages": [{"role": "user", "content": ["hi"]}]}, 422, "messages.0.content"),
    ("chat", {"messages": [{"role": "user", "content": None}]}, OK, None),
    ("chat", {"messages": [{"role": "tool", "content": "1", "tool_call_id": "a"}]}, 422, "messages.0.role"),
    (
        "chat",
        {"messages": [{"role": "assistant", "content": None, "tool_calls": [{"id": "a"}]}]},
        400,
        "messages.0.tool_calls",
    ),
    ("chat", {"messages": [{"role": "user", "content": "hi", "colour": "red"}]}, 400, "messages.0.colour"),
    ("chat", {"messages": "hi"}, 422, "messages"),
    (
        "chat",
        {"messages": [{"role": "user", "content": "😀 日本 \x7f \u200b"}]},
        OK,
        None,
    ),  # unknown to the tokenizer
    ("chat", {"messages": [{"role": "user", "content": "half a pair: \ud83d"}]}, 422, "messages.0.content"),
    ("chat", {"messages": [{"role": "user", "content": "a \u0000 b"}]}, 422, "messages.0.content"),
    ("text", {"prompt": ["ok", "a\u0000"]}, 422, "prompt.1"),
    ("chat", {"tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tools"),
    ("chat", {"tool_choice": "auto"}, 400, "tool_choice"),
    ("chat", {"tool_choice": "none"}, OK, None),
    ("chat", {"functions": [{"name": "f"}]}, 400, "functions"),
    ("chat", {"parallel_tool_calls": True}, 400, "parallel_tool_calls"),
    ("chat", {"response_format": {"type": "json_object"}}, 400, "response_format"),
    (
        "chat",
        {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
        400,
        "response_format",
    ),
    ("chat", {"response_format": {"type": "text"}}, OK, None),
    ("chat", {"logit_bias": {"50256": -100}}, 400, "logit_bias"),
    ("chat", {"logit_bias": {}}, OK, None),
    ("chat", {"frequency_penalty": 0.5}, 400, "frequency_penalty"),
    ("chat", {"presence_penalty": 0}, OK, None),
    ("chat", {"reasoning_effort": "high"}, 400, "reasoning_effort"),
    ("chat", {"modalities": ["text", "audio"]}, 400, "modalities"),
    ("chat", {"temprature": 0.5}, 400, "temprature"),
    ("chat", {"logprobs": True, "top_logprobs": 21}, 422, "top_logprobs"),
    ("chat", {"top_logprobs": 2}, 400, "top_logprobs"),
    ("chat", {"logprobs": "many"}, 422, "logprobs"),
    (
        "chat",
        {"logprobs": None, "top_logprobs": None, "temperature": None, "n": None, "stop": None},
        OK,
        None,
    ),
    ("chat", {"stream_options": {"include_usage": True}}, 400, "stream_options"),
    (
        "chat",
        {"stream": True, "stream_options": {"include_usage": "sometimes"}},
        422,
        "stream_options.include_usage",
    ),
    ("chat", {"max_completion_tokens": 0}, 422, "max_completion_tokens"),
    ("chat", {"max_completion_tokens": 10_000}, 422, "max_completion_tokens"),
    ("chat", {"max_tokens": 2**70}, 422, "max_tokens"),
    ("chat", {"n": 0}, 422, "n"),
    ("chat", {"top_p": 0}, 422, "top_p"),
    ("chat", {"stop": ""}, 422, "stop"),
    ("chat", {"model": 5}, 422, "model"),
    ("chat", {"user": {"id": 1}}, 422, "user"),
    ("text", {"prompt": ""}, 422, "prompt"),
    ("text", {"prompt": []}, 422, "prompt"),
    ("text", {"prompt": [1, 2, 3]}, 422, "prompt"),
    ("text", {"prompt": ["a", "b"], "stream": True, "n": 2}, OK, None),
    ("text", {"prompt": ["a"] * 100, "n": 2}, 422, "prompt"),
    ("text", {"prompt": "a", "logprobs": 6}, 422, "logprobs"),
    ("text", {"prompt": "a", "logprobs": True}, OK, None),  # a bool is an int in JSON's eyes and OpenAI's: 1
    ("text", {"prompt": "a", "echo": True}, 400, "echo"),
    ("text", {"prompt": "a", "best_of": 3}, 400, "best_of"),
    ("text", {"prompt": "a", "best_of": 2, "n": 2}, OK, None),
    ("text", {"prompt": "a", "suffix": "b"}, 400, "suffix"),
    ("text", {"prompt": "a", "messages": CHAT}, 400, "messages"),
    ("text", {"prompt": "a", "seed": -1}, OK, None),
]


@pytest.mark.parametrize(
    "endpoint,body,status,param", SWEEP, ids=[f"{e}:{json.dumps(b)[:60]}" for e, b, _, _ in SWEEP]
)
def test_bad_and_odd_bodies_answer_4xx_or_200(client, endpoint, body, status, param):
    path = "/v1/chat/completions" if endpoint == "chat" else "/v1/completions"
    base = {"messages": CHAT} if endpoint == "chat" else {}
    # json.dumps escapes what httpx's encoder cannot send (a lone surrogate goes as the JSON escape \ud83d)
    payload = json.dumps({**base, "max_tokens": 4, **body})
    r = client.post(path, content=payload, headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    if status != OK:
        error = r.json()["error"]
        assert error["param"] == param and error["type"] == "invalid_request_error", error
        assert param.split(".")[-1] in error["message"], error
    elif body.get("stream"):
        assert r.text.rstrip().endswith("data: [DONE]")


def test_the_server_is_healthy_after_the_sweep(client, oai):
    for endpoint, body, _, _ in SWEEP:  # all of them, back to back, then ordinary requests
        payload = json.dumps({**({"messages": CHAT} if endpoint == "chat" else {}), "max_tokens": 4, **body})
        client.post("/v1/chat/completions" if endpoint == "chat" else "/v1/completions", content=payload,
                    headers={"Content-Type": "application/json"})  # fmt: skip
    assert client.get("/health").status_code == 200
    r = oai.chat.completions.create(model="reasoner", messages=CHAT, max_tokens=4)
    assert r.choices[0].finish_reason in ("stop", "length")


def test_the_openai_client_sees_400s_as_bad_requests_naming_the_parameter(oai):
    with pytest.raises(openai.BadRequestError, match="tools") as e:
        oai.chat.completions.create(model="reasoner", messages=CHAT,
                                    tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}])  # fmt: skip
    assert e.value.param == "tools" and e.value.type == "invalid_request_error"
    with pytest.raises(openai.BadRequestError, match="Unrecognized request argument supplied: colour"):
        oai.chat.completions.create(model="reasoner", messages=CHAT, extra_body={"colour": "red"})


def test_logprobs_are_at_the_sampling_temperature(server, oai):
    """The same greedy tokens reported at two temperatures are not the same numbers: the sampled distribution's
    log-probs, not the model's at temperature 1 (a seeded sample at T and its greedy twin share the first token
    only by chance, so compare the top alternatives of a first token, which exist at both)."""
    kwargs = dict(model="reasoner", prompt="1 + 1 = ", max_tokens=1, logprobs=5, seed=1)
    hot = oai.completions.create(**kwargs, temperature=2.0).choices[0].logprobs.top_logprobs[0]
    cold = oai.completions.create(**kwargs, temperature=0.5).choices[0].logprobs.top_logprobs[0]
    assert set(hot) == set(cold)  # the same 5 most likely tokens
    spread = lambda top: max(top.values()) - min(top.values())  # noqa: E731
    assert spread(cold) == pytest.approx(4 * spread(hot), rel=1e-3)  # log-prob gaps scale as 1 / temperature
    assert all(math.isfinite(v) and v <= 0 for v in hot.values())


def test_plain_http_error_shape_is_openais(client):
    r = client.post(
        "/v1/chat/completions", json={"messages": CHAT, "response_format": {"type": "json_object"}}
    )
    assert r.status_code == 400
    assert set(r.json()) == {"error"} and set(r.json()["error"]) == {"message", "type", "param", "code"}
    deep = (
        '{"messages": [{"role": "user", "content": "hi"}], "metadata": '
        + '{"a": ' * 50_000
        + "1"
        + "}" * 50_001
    )
    for body in ('{"messages": ' + "[" * 100_000 + "]" * 100_000 + "}", deep, '{"seed": ' + "9" * 5000 + "}"):
        r = client.post("/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "body", r.text[:200]
    r = client.post("/v1/no-such-route", json={})
    assert r.status_code == 404 and r.json()["error"]["message"] == "Not Found"
    assert client.get("/health").status_code == 200


def test_feedback_export_carries_the_behaviour_logprobs_of_rated_answers(server, client, tmp_path, capsys):
    from reasoner.cli import main

    svc, _ = server
    body = {"messages": [{"role": "user", "content": "Rate me: 5 + 5?"}], "n": 2, "temperature": 0.9, "seed": 3,
            "max_tokens": 8}  # fmt: skip
    cid = client.post("/v1/chat/completions", json=body).json()["id"]  # no logprobs asked: stored anyway
    for choice, rating in ((0, 1), (1, -1)):
        r = client.post(
            "/v1/feedback", json={"response": {"completion_id": cid, "choice": choice}, "rating": rating}
        )
        assert r.status_code == 201
    out = tmp_path / "pairs.jsonl"
    assert main(["feedback", "export", "--db", svc.store.url, "--out", str(out)]) == 0
    (pair,) = [
        p for p in map(json.loads, out.read_text().splitlines()) if p["chosen_ref"]["completion_id"] == cid
    ]
    stored = svc.store.completion(cid)["choices"]
    for side, index in (("chosen", 0), ("rejected", 1)):
        assert pair[f"{side}_logprobs"] == {**stored[index]["logprobs"], "temperature": 0.9}
        assert len(pair[f"{side}_logprobs"]["token_ids"]) == len(pair[f"{side}_logprobs"]["logprobs"]) > 0


def test_requests_sharing_a_batch_each_get_the_logprobs_they_asked_for(tiny_model_dir, tmp_path):
    """The batch's call computes the largest top-k asked; each answer reports its own k (none when not asked)."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.serve.conftest import start_server

    svc, h = start_server(tiny_model_dir, tmp_path / "fb.db", batch_window_ms=300)
    try:
        oai = openai.OpenAI(base_url=h.url + "/v1", api_key=API_KEY, max_retries=0)
        asks = [
            {},
            {"logprobs": True},
            {"logprobs": True, "top_logprobs": 4},
            {"logprobs": True, "top_logprobs": 1},
        ]
        calls = svc.batcher.calls
        with ThreadPoolExecutor(len(asks)) as pool:
            answers = list(pool.map(lambda ask: oai.chat.completions.create(
                model="reasoner", messages=CHAT, max_tokens=6, temperature=0.8, **ask), asks))  # fmt: skip
        assert svc.batcher.calls - calls == 1  # one shared call
        assert answers[0].choices[0].logprobs is None
        for ask, a in zip(asks[1:], answers[1:], strict=True):
            entries = a.choices[0].logprobs.content
            assert entries and all(len(e.top_logprobs) == ask.get("top_logprobs", 0) for e in entries)
        assert all(
            svc.store.completion(a.id)["choices"][0]["logprobs"] is not None for a in answers
        )  # all stored
    finally:
        h.stop()
        svc.store.close()
