"""Streaming (``stream: true``) over real HTTP: tokens reach the client while the shared decode runs, the stream
joins to the non-streamed answer, and a client that leaves does not break its batch. Then ``TokenStream`` on its
own: stop strings and half characters are held back until they are settled."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import openai
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from reasoner.models import load_tokenizer
from reasoner.serve.decode import TokenStream
from reasoner.serve.store import NotFound
from tests.serve.conftest import API_KEY, start_server

CHAT = [{"role": "user", "content": "Count to ten."}]
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    # a wide batch window: requests sent together by the tests below surely share one generate call
    svc, handle = start_server(
        tiny_model_dir, tmp_path_factory.mktemp("stream") / "feedback.db", batch_window_ms=150
    )
    yield svc, handle
    handle.stop()
    svc.store.close()


@pytest.fixture
def oai(server):
    return openai.OpenAI(base_url=server[1].url + "/v1", api_key=API_KEY, max_retries=0)


def _joined(stream) -> tuple[dict, dict, set]:
    """(text per choice, finish_reason per choice, ids) of a streamed chat or text completion."""
    texts: dict[int, str] = {}
    finish: dict[int, str] = {}
    ids = set()
    for chunk in stream:
        ids.add(chunk.id)
        for c in chunk.choices:
            piece = c.delta.content if hasattr(c, "delta") else c.text
            texts[c.index] = texts.get(c.index, "") + (piece or "")
            if c.finish_reason is not None:
                finish[c.index] = c.finish_reason
    return texts, finish, ids


def test_chunks_arrive_while_the_completion_is_being_generated(server, oai):
    svc, _ = server
    engine = svc.policy.engine
    ended: list[float] = []

    def timed(*args, **kwargs):  # the real engine, noting when its generate call returns
        out = type(engine).generate_mixed(engine, *args, **kwargs)
        ended.append(time.perf_counter())
        return out

    engine.generate_mixed = timed
    try:
        arrivals = [
            time.perf_counter()
            for chunk in oai.chat.completions.create(
                model="reasoner", messages=CHAT, max_tokens=200, temperature=0.0, stream=True
            )
            if chunk.choices and chunk.choices[0].delta.content
        ]
    finally:
        del engine.generate_mixed
    assert len(ended) == 1 and len(arrivals) > 20
    early = sum(t < ended[0] for t in arrivals)
    assert early >= 10, f"{early} of {len(arrivals)} content chunks arrived before generation ended"
    assert arrivals[-1] - arrivals[0] > 0.05  # spread over the decode, not one burst at the end


@pytest.mark.parametrize(
    "sampling",
    [
        {"n": 1, "temperature": 0.0},
        {"n": 2, "temperature": 0.0},
        {"n": 2, "temperature": 1.0, "seed": 5},
    ],
    ids=["greedy", "greedy-n2", "seeded-n2"],
)
def test_the_stream_joins_to_the_non_streamed_answer(server, oai, sampling):
    svc, _ = server
    chat = {"model": "reasoner", "messages": CHAT, "max_tokens": 40, **sampling}
    full = oai.chat.completions.create(**chat)
    texts, finish, (cid,) = _joined(oai.chat.completions.create(**chat, stream=True))
    assert texts == {i: c.message.content for i, c in enumerate(full.choices)}
    assert finish == {i: c.finish_reason for i, c in enumerate(full.choices)}
    stored = svc.store.completion(cid)  # committed before the finish chunks went out
    assert [c["text"] for c in stored["choices"]] == [texts[i] for i in range(sampling["n"])]

    stop = full.choices[0].message.content[5:7]  # a stop string the answer is known to contain
    if stop:
        cut = oai.chat.completions.create(**chat, stop=[stop])
        texts, finish, _ = _joined(oai.chat.completions.create(**chat, stop=[stop], stream=True))
        assert texts == {i: c.message.content for i, c in enumerate(cut.choices)}
        assert finish == {i: c.finish_reason for i, c in enumerate(cut.choices)}
        assert finish[0] == "stop" and stop not in texts[0]

    text = {"model": "reasoner", "prompt": "12 + 7 = ", "max_tokens": 30, **sampling}
    plain = oai.completions.create(**text)
    texts, finish, _ = _joined(oai.completions.create(**text, stream=True))
    assert texts == {c.index: c.text for c in plain.choices}
    assert finish == {c.index: c.finish_reason for c in plain.choices}


def test_a_client_that_leaves_mid_stream_does_not_break_its_batch(server):
    svc, h = server
    body = {"model": "reasoner", "messages": CHAT, "max_tokens": 120, "temperature": 0.0}
    calls, start = svc.batcher.calls, threading.Barrier(3)
    out: dict = {}

    def leaver():
        start.wait()
        with httpx.stream(
            "POST", h.url + "/v1/chat/completions", json={**body, "stream": True}, headers=AUTH
        ) as r:
            for line in r.iter_lines():
                if line.startswith("data: {") and '"content": "' in line and '"content": ""' not in line:
                    out["left_id"] = json.loads(line[6:])["id"]
                    return  # closes the connection after the first piece of text

    def streamer():
        start.wait()
        with openai.OpenAI(base_url=h.url + "/v1", api_key=API_KEY, max_retries=0) as oai:
            out["stream"] = _joined(oai.chat.completions.create(**body, stream=True))

    threads = [threading.Thread(target=f) for f in (leaver, streamer)]
    for t in threads:
        t.start()
    start.wait()
    plain = httpx.post(h.url + "/v1/chat/completions", json=body, headers=AUTH, timeout=120)
    for t in threads:
        t.join(120)
    assert svc.batcher.calls - calls == 1  # all three shared one generate call
    assert plain.status_code == 200
    texts, finish, _ = out["stream"]
    assert texts[0] == plain.json()["choices"][0]["message"]["content"] and len(texts[0]) > 0
    assert finish[0] == plain.json()["choices"][0]["finish_reason"]
    with pytest.raises(NotFound):  # never finished, so never acknowledged: not stored
        svc.store.completion(out["left_id"])
    assert httpx.get(h.url + "/health").status_code == 200


def test_a_failed_generate_ends_the_stream_with_an_error_event(server, oai):
    svc, _ = server
    engine = svc.policy.engine

    def broken(*args, **kwargs):  # the engine failing mid-batch, e.g. out of memory
        raise RuntimeError("CUDA out of memory")

    engine.generate_mixed = broken
    try:
        with pytest.raises(openai.APIError, match="out of memory"):
            list(oai.chat.completions.create(model="reasoner", messages=CHAT, max_tokens=5, stream=True))
    finally:
        del engine.generate_mixed
    assert oai.chat.completions.create(model="reasoner", messages=CHAT, max_tokens=5).choices  # it goes on


# --- TokenStream on its own ---------------------------------------------------------------------------------
def _drive(tokenizer, pieces: list[list[int]], max_tokens: int = 100, stop=(), logprobs=None) -> list[tuple]:
    """Feed token ids step by step (one list per step) to a one-choice stream; the events after each step.
    ``logprobs``: the top-k asked for; each token then comes with log-prob -(its position + 1)."""
    loop = asyncio.new_event_loop()
    try:
        stream = TokenStream(loop, 1, max_tokens, list(stop), logprobs)
        stream.begin("v0", tokenizer)
        steps, position = [], 0
        for ids in pieces:
            for t in ids:
                position += 1
                stream.push(0, t, None if logprobs is None else (-position, [(t, -position), (0, -50.0)]))
            stream.flush()
            loop.run_until_complete(asyncio.sleep(0))
            events = []
            while not stream.events.empty():
                events.append(stream.events.get_nowait())
            steps.append([e for e in events if e[0] != "start"])
        return steps
    finally:
        loop.close()


def test_a_stop_string_is_held_back_until_it_is_ruled_out_or_complete(tiny_model_dir):
    tok = load_tokenizer(str(tiny_model_dir))
    enc = [[t] for t in tok.encode("ab\nUx\nUser: no", add_special_tokens=False)]
    steps = _drive(tok, enc, stop=["\nUser:"])
    texts = ["".join(e[2] for e in step if e[0] == "text") for step in steps]
    assert texts[:5] == ["a", "b", "", "", "\nUx"]  # "\nU" might start the stop string; "\nUx" cannot
    done = [e for step in steps for e in step if e[0] == "done"]
    assert len(done) == 1 and done[0][2].text == "ab\nUx" and done[0][2].finish_reason == "stop"
    assert "".join(texts) == "ab\nUx"


def test_log_prob_entries_go_with_the_text_they_complete(tiny_model_dir):
    tok = load_tokenizer(str(tiny_model_dir))
    enc = [[t] for t in tok.encode("ab\nUx\nUser: no", add_special_tokens=False)]
    steps = _drive(tok, enc, stop=["\nUser:"], logprobs=1)
    texts = [e for step in steps for e in step if e[0] == "text"]
    for _, _, delta, entries in texts:  # each chunk's entries are exactly its text's tokens
        assert "".join(e.token for e in entries) == delta
    entries = [e for *_, es in texts for e in es]
    assert [e.logprob for e in entries] == [-1, -2, -3, -4, -5] and all(len(e.top) == 1 for e in entries)
    (done,) = [e[2] for step in steps for e in step if e[0] == "done"]
    assert done.text == "ab\nUx" and done.logprobs == [-1, -2, -3, -4, -5]  # what the store keeps
    assert done.token_ids == tok.encode("ab\nUx", add_special_tokens=False)
    no = _drive(tok, enc, stop=["\nUser:"])
    assert all(e[3] is None for step in no for e in step if e[0] == "text")  # not asked for: no entries
    assert [e[2] for step in no for e in step if e[0] == "done"][0].logprobs is None  # none reported


def test_half_a_character_is_held_back():
    # a byte-level tokenizer: "é" is two tokens, and the first alone decodes to U+FFFD
    bpe = Tokenizer(
        models.BPE(vocab={c: i for i, c in enumerate(pre_tokenizers.ByteLevel.alphabet())}, merges=[])
    )
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe)
    ids = tok.encode("aé!", add_special_tokens=False)
    assert len(ids) == 4
    steps = _drive(tok, [[t] for t in ids], max_tokens=4)
    assert [[e[2] for e in step if e[0] == "text"] for step in steps] == [["a"], [], ["é"], ["!"]]
    assert steps[-1][-1][2].finish_reason == "length"


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_the_engine_reports_each_step_of_every_row(tiny_model_dir, temperature):
    from reasoner.models import load_policy
    from reasoner.rollout.base import SamplingParams
    from reasoner.rollout.hf import HFEngine

    # batch_size 4 with n 2: three prompts take two model.generate calls, so rows carry an offset
    engine = HFEngine(load_policy(str(tiny_model_dir)), load_tokenizer(str(tiny_model_dir)), batch_size=4)
    seen: dict[int, list[int]] = {}

    def on_tokens(rows, ids, lps):
        assert lps is None  # none asked for
        for row, token in zip(rows, ids, strict=True):
            seen.setdefault(row, []).append(token)

    params = SamplingParams(n=2, temperature=temperature, max_new_tokens=12, seed=1)
    rollouts = engine.generate(["1+1=", "2+2=", "3+3="], params, on_tokens=on_tokens)
    assert sorted(seen) == list(range(6))
    for row, r in enumerate(rollouts):  # a finished row keeps getting pad tokens until the call ends
        assert seen[row][: len(r.completion_ids)] == r.completion_ids
