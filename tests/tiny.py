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
