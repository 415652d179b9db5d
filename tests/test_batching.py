"""Left padding must not change any row's logits; bucketing must cover every example once."""

import torch

from peftops.training.batching import IGNORE, build_batch, forward_logits, length_bucketed_batches
from tiny import tiny_model


def test_left_padded_batch_matches_each_row_alone():
    model = tiny_model(seed=3)
    prompts = [[2, 10, 11, 12, 13, 14, 15], [2, 20], [2, 30, 31, 32]]
    conts = [[40], [41, 42], [43]]
    batch = build_batch(prompts, conts, pad_id=0)
    together = forward_logits(model, batch)
    for i, (p, c) in enumerate(zip(prompts, conts)):
        alone = forward_logits(model, build_batch([p], [c], pad_id=0))
        k = len(c)
        torch.testing.assert_close(together[i, -k:], alone[0, -k:], atol=1e-5, rtol=1e-5)


def test_targets_sit_at_the_end_and_last_token_is_not_fed():
    batch = build_batch([[2, 5, 6], [2, 7]], [[9], [8, 9]], pad_id=0)
    assert batch.input_ids.tolist() == [[2, 5, 6], [2, 7, 8]]
    assert batch.targets.tolist() == [[IGNORE, 9], [8, 9]]
    short = build_batch([[2, 5], [2, 7, 7, 7]], [[9], [9]], pad_id=0)
    assert short.input_ids.tolist() == [[0, 0, 2, 5], [2, 7, 7, 7]]
    assert short.attention_mask.tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]]
    assert short.position_ids.tolist() == [[0, 0, 0, 1], [0, 1, 2, 3]]


def test_bucketed_batches_cover_every_example_once_and_are_deterministic():
    lengths = [((i * 37) % 50) + 1 for i in range(203)]
    a = length_bucketed_batches(lengths, 8, seed=1, epoch=0)
    assert sorted(i for b in a for i in b) == list(range(203))
    assert a == length_bucketed_batches(lengths, 8, seed=1, epoch=0)
    assert a != length_bucketed_batches(lengths, 8, seed=1, epoch=1)
    # within a batch lengths are close: far less padding than random batching
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in a) / len(a)
    assert spread < 10
