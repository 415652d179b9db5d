"""Tiny Gemma 3 models, tokenizers and task data built in code (no download)."""

from __future__ import annotations

import random
from pathlib import Path

import torch

# Paths shared by the tests. They live here, not in conftest.py: tests/registry has its own
# conftest, and `from conftest import ...` would resolve to whichever was imported first.
REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO.parent / "shared" / "data").resolve()

POS = ["good", "great", "lovely", "superb", "fun", "moving", "brilliant", "charming"]
NEG = ["bad", "awful", "dull", "boring", "weak", "tedious", "messy", "poor"]
FILL = ["the", "film", "movie", "plot", "was", "a", "very", "and", "story", "acting", "is", "quite"]


def sentence(rng: random.Random, label: int) -> str:
    words = [rng.choice(FILL) for _ in range(rng.randint(3, 8))]
    words.insert(rng.randrange(len(words) + 1), rng.choice(POS if label else NEG))
    return " ".join(words)


def write_sst2_like(root: Path, n_train: int = 64, n_dev: int = 32, seed: int = 0) -> Path:
    """A small SST-2-shaped task (header row, trailing space before the tab) under ``root``."""
    rng = random.Random(seed)
    d = root / "glue" / "SST-2"
    d.mkdir(parents=True, exist_ok=True)
    for name, n in (("train.tsv", n_train), ("dev.tsv", n_dev)):
        rows = ["sentence\tlabel"]
        for i in range(n):
            label = i % 2
            rows.append(f"{sentence(rng, label)} \t{label}")
        (d / name).write_text("\n".join(rows) + "\n")
    return root


def tiny_tokenizer():
    """A small BPE tokenizer with Gemma's special-token ids (pad 0, eos 1, bos 2, unk 3)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    corpus = [" ".join(POS + NEG + FILL), "Review: Sentiment: negative positive", "\n"] * 4
    trainer = trainers.BpeTrainer(vocab_size=160, special_tokens=["<pad>", "<eos>", "<bos>", "<unk>"],
                                  initial_alphabet=list("abcdefghijklmnopqrstuvwxyz:\n?!.,'-"))
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                                   bos_token="<bos>", unk_token="<unk>")
    fast.padding_side = "left"
    return fast


def tiny_config(vocab_size: int = 160, layers: int = 2):
    from transformers import Gemma3TextConfig

    return Gemma3TextConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=512,
        sliding_window=16, layer_types=["sliding_attention", "full_attention"][:layers] + ["full_attention"] * (layers - 2),
        tie_word_embeddings=True, pad_token_id=0, eos_token_id=1, bos_token_id=2, attention_bias=False,
        # A wide init so the frozen, tied LM head can express confident predictions, as a
        # pretrained head does (std 0.02 caps every logit near 0.6 after the final norm).
        initializer_range=0.3,
    )


def tiny_model(seed: int = 0, vocab_size: int = 160, layers: int = 2):
    from transformers import Gemma3ForCausalLM

    torch.manual_seed(seed)
    model = Gemma3ForCausalLM(tiny_config(vocab_size, layers))
    model.eval()
    return model


def make_snapshot(home: Path, name: str = "gemma-3-270m", seed: int = 0):
    """Write a tiny pinned snapshot where the pipeline expects the real one."""
    from peftops.model.snapshot import snapshot_dir, write_snapshot

    tok = tiny_tokenizer()
    model = tiny_model(seed, vocab_size=len(tok))
    return write_snapshot(model, tok, snapshot_dir(name, home), name)


# A Gemma-3-shaped chat template (turns between <start_of_turn> and <end_of_turn>, the assistant
# as "model", a system message folded into the first user turn) for the tiny tokenizer.
TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}{% set ns = namespace(system='') %}"
    "{% for m in messages %}{% if m['role'] == 'system' %}{% set ns.system = m['content'] + '\n\n' %}"
    "{% else %}{{ '<start_of_turn>' + ('model' if m['role'] == 'assistant' else 'user') + '\n' }}"
    "{% if m['role'] == 'user' %}{{ ns.system }}{% set ns.system = '' %}{% endif %}"
    "{{ m['content'] | trim }}<end_of_turn>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def tiny_chat_tokenizer():
    """The tiny tokenizer with turn markers as special tokens and a Gemma-3-shaped chat template."""
    tok = tiny_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
    tok.chat_template = TINY_CHAT_TEMPLATE
    return tok


def write_generation_like(root: Path, n_train: int = 48, n_dev: int = 16, seed: int = 0) -> Path:
    """A small JSONL generation task under ``root/gen``: the review's sentiment word is the response."""
    import json

    rng = random.Random(seed)
    d = root / "gen"
    d.mkdir(parents=True, exist_ok=True)
    for name, n in (("train.jsonl", n_train), ("dev.jsonl", n_dev)):
        rows = []
        for i in range(n):
            word = rng.choice(POS if i % 2 else NEG)
            words = [rng.choice(FILL) for _ in range(rng.randint(2, 5))]
            words.insert(rng.randrange(len(words) + 1), word)
            rows.append(json.dumps({"text": " ".join(words), "answer": f"{word} {rng.choice(FILL)}"}))
        (d / name).write_text("\n".join(rows) + "\n")
    return root


GEN_ENTRY = {
    "kind": "generation", "format": "jsonl", "train": "gen/train.jsonl", "dev": "gen/dev.jsonl",
    "fields": {"text": "text"}, "response_field": "answer", "prompt_template": "Review: {text}\nSentiment:",
    "metric": "rougeL", "max_new_tokens": 6, "max_length": 64,
}
