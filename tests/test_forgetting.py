"""Forgetting: the general held-out text set and the model's loss on it, before vs after."""

import json

import pytest
import torch
import torch.nn.functional as F

from tiny import SHARED_DATA
from peftops.errors import DataError
from peftops.evaluation.forgetting import ForgettingConfig, build_general_set, general_nll, measure, seed_task_text
from test_compare import write_general
from tiny import tiny_model, tiny_tokenizer



def test_seed_task_text_is_instruction_input_output():
    row = {"instruction": "What is the relation?", "instances": [{"input": "Night : Day", "output": "Opposites."}]}
    assert seed_task_text(row) == "What is the relation?\n\nNight : Day\n\nOpposites."
    row["instances"][0]["input"] = ""
    assert seed_task_text(row) == "What is the relation?\n\nOpposites."


def test_general_set_is_fixed_skips_long_texts_and_never_cuts(tmp_path):
    src = write_general(tmp_path / "g.jsonl", n=12)
    tok = tiny_tokenizer()
    cfg = ForgettingConfig(source=str(src), size=6, max_tokens=64)
    a, b = build_general_set(tok, cfg), build_general_set(tok, cfg)
    assert a.digest == b.digest and a.ids == b.ids and len(a) == 6
    assert all(ids[0] == tok.bos_token_id and len(ids) <= 64 for ids in a.input_ids)
    other = build_general_set(tok, ForgettingConfig(source=str(src), size=6, max_tokens=64, seed=1))
    assert other.digest != a.digest
    with pytest.raises(DataError, match="only 0 texts fit max_tokens=8"):
        build_general_set(tok, ForgettingConfig(source=str(src), size=6, max_tokens=8))


def test_general_set_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "g.jsonl"
    bad.write_text(json.dumps({"instruction": "x", "instances": []}) + "\n{not json\n")
    with pytest.raises(DataError, match="g.jsonl, line 2: invalid JSON"):
        build_general_set(tiny_tokenizer(), ForgettingConfig(source=str(bad), size=1))
    with pytest.raises(DataError, match="general text file not found"):
        build_general_set(tiny_tokenizer(), ForgettingConfig(source=str(tmp_path / "none.jsonl"), size=1))


def test_batched_left_padded_loss_equals_a_per_text_forward(tmp_path):
    tok = tiny_tokenizer()
    texts = build_general_set(tok, ForgettingConfig(source=str(write_general(tmp_path / "g.jsonl")), size=5,
                                                    max_tokens=64))
    model = tiny_model(seed=3, vocab_size=len(tok))
    total = count = 0
    with torch.no_grad():
        for ids in texts.input_ids:
            logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
            total += float(F.cross_entropy(logits, torch.tensor(ids[1:]), reduction="sum"))
            count += len(ids) - 1
    assert count == texts.n_tokens
    assert general_nll(model, texts, pad_id=tok.pad_token_id, batch_size=3) == pytest.approx(total / count, rel=1e-4)


def test_delta_is_zero_for_the_base_and_follows_the_model(tmp_path):
    tok = tiny_tokenizer()
    texts = build_general_set(tok, ForgettingConfig(source=str(write_general(tmp_path / "g.jsonl")), size=6,
                                                    max_tokens=64))
    model = tiny_model(seed=3, vocab_size=len(tok))
    before = general_nll(model, texts, pad_id=0)
    same = measure(model, texts, before, pad_id=0)
    assert same.delta == 0.0 and same.ppl_ratio == 1.0 and same.n_texts == 6
    # a few LM steps on these very texts: the general loss must go down (negative delta)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    for _ in range(5):
        for ids in texts.input_ids:
            x = torch.tensor([ids])
            loss = F.cross_entropy(model(input_ids=x).logits[0, :-1], x[0, 1:])
            opt.zero_grad()
            loss.backward()
            opt.step()
    after = measure(model, texts, before, pad_id=0)
    assert after.delta < 0 and after.ppl_ratio < 1 and after.to_dict()["delta"] == after.delta


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_DATA.exists(), reason="../shared/data missing")
def test_default_set_from_texts_no_shipped_task_trains_on(real_snapshot):
    from peftops.model.snapshot import load_tokenizer

    texts = build_general_set(load_tokenizer(real_snapshot[1]), ForgettingConfig(), SHARED_DATA)
    assert len(texts) == 32 and all(len(x) <= 96 for x in texts.input_ids)
    # the user-oriented Self-Instruct set (evaluation only): the self_instruct task trains on the seed tasks
    assert all(i.startswith("user_oriented_task_") for i in texts.ids) and 800 < texts.n_tokens < 32 * 96
