"""`reasoner serve` on SmolLM2 over real HTTP with the official client: the ChatML template renders the chat, the
answer ends at ``<|im_end|>`` without showing it, and streamed deltas of byte-level BPE text (an emoji is three
tokens, the first of them half a character) join to exactly the non-streamed answer."""

from __future__ import annotations

import openai
import pytest

from tests.serve.conftest import API_KEY, start_server

pytestmark = [pytest.mark.slow, pytest.mark.real_model]


@pytest.fixture(scope="module")
def oai(real_model_dir, tmp_path_factory):
    svc, handle = start_server(
        real_model_dir, tmp_path_factory.mktemp("serve-real") / "feedback.db", dtype="float32"
    )
    yield openai.OpenAI(base_url=handle.url + "/v1", api_key=API_KEY, max_retries=0, timeout=600)
    handle.stop()
    svc.store.close()


def _joined(stream) -> tuple[str, str | None, list[str]]:
    text, finish, deltas = "", None, []
    for chunk in stream:
        for c in chunk.choices:
            piece = c.delta.content if hasattr(c, "delta") else c.text
            if piece:
                deltas.append(piece)
                text += piece
            finish = c.finish_reason or finish
    return text, finish, deltas


def test_non_ascii_text_streams_in_deltas_that_join_to_the_whole_answer(oai, real_tokenizer):
    # a repeated pattern the model continues: "café ☕" again, the emoji in three byte-level tokens
    body = dict(
        model="reasoner",
        prompt="Menu: café ☕, café ☕, café ☕, café ☕, café ☕,",
        max_tokens=10,  # two " café ☕," of 5 tokens: the answer ends on a whole character
        temperature=0.0,
    )
    pieces = real_tokenizer.convert_ids_to_tokens(real_tokenizer(" ☕")["input_ids"])
    assert len(pieces) == 3  # the emoji really is split across tokens
    full = oai.completions.create(**body).choices[0].text
    text, finish, deltas = _joined(oai.completions.create(**body, stream=True))
    assert "☕" in full and "é" in full and "\ufffd" not in full, full
    assert text == full and finish == "length"
    assert len(deltas) > 1 and not any("\ufffd" in d for d in deltas)  # half characters were held back


def test_a_chat_answer_uses_the_chat_template_and_ends_at_im_end(oai):
    body = dict(model="reasoner", messages=[{"role": "user", "content": "What is the capital of France?"}],
                max_tokens=48, temperature=0.0)  # fmt: skip
    full = oai.chat.completions.create(**body).choices[0]
    text, finish, _ = _joined(oai.chat.completions.create(**body, stream=True))
    assert "Paris" in full.message.content, full.message.content
    assert text == full.message.content and finish == full.finish_reason == "stop"
    assert "<|im" not in text and "assistant" not in text.lower()[:20]
