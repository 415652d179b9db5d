"""Batched greedy generation with the KV cache, for every method's model.

One loop for all methods: the prompts are left-padded (``build_batch``, positions counted over
real tokens), the first forward goes through the method's own model (a soft prompt or a prefix is
put in place there) with ``use_cache=True`` and logits at the last position only; each further
token is one forward of the transformers model inside (``hf_model``) over that token and the
cache. LoRA, adapters and BitFit live inside that model, so it computes what the method computes;
for prompt and prefix tuning the virtual tokens are already in the cache, and the attention mask
and positions carry on from the layout the method used:

* prompt tuning (``PromptTuned``): ``[pads][virtual][text]``, positions over virtual + text;
* prefix tuning (peft): ``[virtual][pads][text]`` with the virtual entries unmasked, positions
  offset by the number of virtual tokens.

A row stops at a stop token (end of sequence, or the chat template's end-of-turn marker; never
part of the output), at a stop string (the text is cut before it), or after ``max_new_tokens``.
Left padding makes a row's output independent of its batch (tested against one at a time).

Why not ``model.generate``: it is not available on the prompt-tuning wrapper, and peft's prefix
path rebuilds the cache per call. On the plain model the two agree token for token (tested).
``bench/gen_bench.py`` (one run each, 2 shared cores, fp32): on Gemma 3 270M, 16 prompts x 32 new
tokens, this loop 81.9 s vs ``generate`` 268.1 s, identical outputs (the machine was busy: read
the ratio, not the seconds); on the tiny test model, where per-step overhead dominates, 1.04 s vs
0.39 s.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from peftops.methods.prompt.method import PromptTuned
from peftops.training.batching import build_batch, hf_model, shortest_first


@dataclass
class Generated:
    """Per prompt: the generated token ids (stop token excluded) and, with a tokenizer, the text."""

    ids: list[list[int]]
    texts: list[str]


def _layout(model: torch.nn.Module, mask: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(the attention mask over the cache after the first forward, the number of virtual tokens)."""
    if isinstance(model, PromptTuned):
        n = int(model.peft.active_peft_config.num_virtual_tokens)
        pads = (mask == 0).sum(dim=1, keepdim=True)
        j = torch.arange(n + mask.shape[1], device=mask.device).unsqueeze(0)
        return (j >= pads).to(mask.dtype), n
    cfg = getattr(model, "active_peft_config", None)
    if cfg is not None and getattr(cfg, "is_prompt_learning", False):
        if str(getattr(cfg.peft_type, "value", cfg.peft_type)) != "PREFIX_TUNING":
            raise NotImplementedError(f"generation with a bare peft {cfg.peft_type} model; wrap it as the method does")
        n = int(cfg.num_virtual_tokens)
        return torch.cat([torch.ones(mask.shape[0], n, dtype=mask.dtype, device=mask.device), mask], dim=1), n
    return mask, 0


def _cache_of(out) -> object:
    """The KV cache a forward returned (transformers 5 calls it ``cache``)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _stop_at(text: str, stops: tuple[str, ...] | list[str]) -> int | None:
    hits = [text.find(s) for s in stops if s and s in text]
    return min(hits) if hits else None


@torch.no_grad()
def greedy_generate(model: torch.nn.Module, prompts: list[list[int]], *, pad_id: int, stop_ids: list[int],
                    max_new_tokens: int, device: str | torch.device | None = None, tokenizer=None,
                    stop: tuple[str, ...] | list[str] = ()) -> Generated:
    """Greedy continuations of ``prompts`` (one batch; see the module docstring). Stop strings need
    ``tokenizer`` (the texts are decoded with it, special tokens skipped)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.eval()
    batch = build_batch(prompts, [[0]] * len(prompts), pad_id).to(device)
    n_rows = len(prompts)
    # The last position as an index tensor, not the int 1 (see ``forward_logits``): the int gives
    # the head a strided slice, and with a frozen head weight (every PEFT method's) torch then
    # broadcasts the 262k x 640 weight over the batch for a batched product, copying it per row:
    # ~30 s per 16-prompt prefill on the real model here, 0.5 s with the index (bench/head_probe.py).
    last = torch.tensor([-1], device=device)
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                use_cache=True, logits_to_keep=last)
    cache = _cache_of(out)
    mask, n_virtual = _layout(model, batch.attention_mask)
    position = batch.position_ids[:, -1:] + 1 + n_virtual
    decoder = hf_model(model)
    stops = set(int(t) for t in stop_ids)
    ids: list[list[int]] = [[] for _ in range(n_rows)]
    texts = [""] * n_rows
    done = [False] * n_rows
    cut_short = [False] * n_rows  # stopped by a stop string: texts[i] is already cut
    token = out.logits[:, -1, :].argmax(-1)
    for step in range(max_new_tokens):
        for i, t in enumerate(token.tolist()):
            if done[i]:
                continue
            if t in stops:
                done[i] = True
                continue
            ids[i].append(t)
            if stop and tokenizer is not None:
                text = tokenizer.decode(ids[i], skip_special_tokens=True)
                cut = _stop_at(text, stop)
                if cut is not None:
                    texts[i], done[i], cut_short[i] = text[:cut], True, True
        if all(done) or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones(n_rows, 1, dtype=mask.dtype, device=device)], dim=1)
        out = decoder(input_ids=token.unsqueeze(1), attention_mask=mask, position_ids=position,
                      cache=cache, use_cache=True, logits_to_keep=1)
        cache = _cache_of(out)
        position = position + 1
        token = out.logits[:, -1, :].argmax(-1)
    if tokenizer is not None:
        for i in range(n_rows):
            if not cut_short[i]:
                texts[i] = tokenizer.decode(ids[i], skip_special_tokens=True)
    return Generated(ids=ids, texts=[t.strip() for t in texts])


def generate_all(model: torch.nn.Module, prompts: list[list[int]], *, pad_id: int, stop_ids: list[int],
                 max_new_tokens: int, batch_size: int, device: str | torch.device | None = None,
                 tokenizer=None, stop: tuple[str, ...] | list[str] = ()) -> Generated:
    """:func:`greedy_generate` over many prompts, ``batch_size`` at a time (sorted by length, so
    little padding), results in the prompts' order."""
    ids: list[list[int]] = [[] for _ in prompts]
    texts = [""] * len(prompts)
    for rows in shortest_first([len(p) for p in prompts], batch_size):
        got = greedy_generate(model, [prompts[i] for i in rows], pad_id=pad_id, stop_ids=stop_ids,
                              max_new_tokens=max_new_tokens, device=device, tokenizer=tokenizer, stop=stop)
        for k, i in enumerate(rows):
            ids[i], texts[i] = got.ids[k], got.texts[k]
    return Generated(ids=ids, texts=texts)
