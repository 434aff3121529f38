"""Log-prob entries (``reasoner.serve.decode.TokenLogprob``) in OpenAI's two response shapes.

Chat: ``choices[i].logprobs = {"content": [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]}``.
Completions (the legacy shape): ``{tokens, token_logprobs, top_logprobs: [{token: logprob}], text_offset}``, the
offsets counted in characters from the start of the completion's text (as vLLM does without ``echo``). A stream
sends each chunk's entries with it; its offsets go on from the previous chunk's.

The log-probs are the sampling call's own (reasoner.rollout.sampler.step_logprobs): softmax(logits /
temperature), before the top-p cut; at temperature 0, the model's softmax.
"""

from __future__ import annotations

from reasoner.serve.decode import TokenLogprob


def _bytes(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def chat_logprobs(entries: list[TokenLogprob]) -> dict:
    """
    >>> chat_logprobs([TokenLogprob("4", -0.1, [("4", -0.1), ("5", -2.5)])])["content"][0]["top_logprobs"][1]
    {'token': '5', 'logprob': -2.5, 'bytes': [53]}
    """
    return {
        "content": [
            {
                "token": e.token,
                "logprob": e.logprob,
                "bytes": _bytes(e.token),
                "top_logprobs": [{"token": t, "logprob": v, "bytes": _bytes(t)} for t, v in e.top],
            }
            for e in entries
        ],
        "refusal": None,
    }


def text_logprobs(entries: list[TokenLogprob], offset: int = 0) -> dict:
    """``offset``: the characters of the completion before these entries' first token.

    >>> text_logprobs([TokenLogprob("1", -0.5, [("1", -0.5)]), TokenLogprob("9", -1.0, [("8", -0.7)])], offset=3)
    {'tokens': ['1', '9'], 'token_logprobs': [-0.5, -1.0], 'top_logprobs': [{'1': -0.5}, {'8': -0.7}], 'text_offset': [3, 4]}
    """
    offsets = []
    for e in entries:
        offsets.append(offset)
        offset += len(e.token)
    return {
        "tokens": [e.token for e in entries],
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [dict(e.top) for e in entries],
        "text_offset": offsets,
    }
