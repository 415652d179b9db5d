"""Generation tasks: manifest, strict rows, response-only loss, greedy generation, metrics, stages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from tiny import GEN_ENTRY, SHARED_DATA, tiny_chat_tokenizer, tiny_model, tiny_tokenizer, write_generation_like

from peftops.data.manifest import load_manifest, parse_task
from peftops.data.prepared import tokenize_split
from peftops.data.reading import read_split_source
from peftops.errors import ConfigError, DataError
from peftops.training.batching import IGNORE, build_batch, supervised_loss


def wide_window_model(vocab_size: int, window: int = 64):
    """The tiny model with a sliding window that holds a prefix and the row (n + width <= window)."""
    from tiny import tiny_config
    from transformers import Gemma3ForCausalLM

    cfg = tiny_config(vocab_size)
    cfg.sliding_window = window
    torch.manual_seed(0)
    return Gemma3ForCausalLM(cfg)


def gen_spec(**over):
    return parse_task("gen", {**GEN_ENTRY, **over}, "test-manifest.yaml")


def prepared(root: Path, split: str = "train", tok=None, **over):
    spec = gen_spec(**over)
    src = read_split_source(spec, split, root)
    return tokenize_split(spec, split, src.examples, tok or tiny_tokenizer(), src.path, 64, src.sha256)


# ---------------------------------------------------------------- the loss: response tokens only


def test_prompt_tokens_are_masked_from_the_loss():
    batch = build_batch([[2, 10, 11, 12], [2, 13]], [[20, 21, 1], [30, 1]], pad_id=0)
    # rows: prompt + response[:-1], left-padded; targets sit at the last K=3 columns
    assert batch.input_ids.tolist() == [[2, 10, 11, 12, 20, 21], [0, 0, 0, 2, 13, 30]]
    assert batch.targets.tolist() == [[20, 21, 1], [IGNORE, 30, 1]]
    # the column predicting the first response token is the prompt's last one (12 and 13)
    model = tiny_model(vocab_size=40)
    loss = supervised_loss(model, batch)
    full = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                 position_ids=batch.position_ids).logits.float()
    labels = torch.full(batch.input_ids.shape, IGNORE)
    labels[0, 3:6] = torch.tensor([20, 21, 1])  # predicted at columns 3, 4, 5 (tokens 12, 20, 21)
    labels[1, 4:6] = torch.tensor([30, 1])  # columns 4, 5 (tokens 13, 30); the prompt never scored
    want = torch.nn.functional.cross_entropy(full.flatten(0, 1), labels.flatten(), ignore_index=IGNORE,
                                             reduction="sum")
    assert float(loss) == pytest.approx(float(want), rel=1e-5)


def test_prepared_generation_split_supervises_response_then_eos(tmp_path):
    root = write_generation_like(tmp_path)
    split = prepared(root)
    tok = tiny_tokenizer()
    assert split.generative and len(split) == 48
    assert split.continuation(0) == split.response_ids[0]
    assert split.response_ids[0][-1] == tok.eos_token_id and split.stop_ids == [tok.eos_token_id]
    assert tok.decode(split.response_ids[0], skip_special_tokens=True) == split.references[0]
    assert split.input_ids[0][0] == tok.bos_token_id


# ---------------------------------------------------------------- chat template


def test_chat_rendered_with_the_tokenizers_own_template(tmp_path):
    tok = tiny_chat_tokenizer()
    chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the film was good"},
            {"role": "assistant", "content": "great fun"}]
    (tmp_path / "gen").mkdir()
    (tmp_path / "gen" / "train.jsonl").write_text(json.dumps({"messages": chat}) + "\n")
    split = prepared(tmp_path, tok=tok, prompt_template="", response_field=None, fields={}, messages_field="messages")
    prompt, response = split.input_ids[0], split.response_ids[0]
    assert prompt == tok.apply_chat_template(chat[:-1], add_generation_prompt=True, tokenize=True,
                                             return_dict=True)["input_ids"]
    assert prompt + response == tok.apply_chat_template(chat, tokenize=True, return_dict=True)["input_ids"]
    end = tok.convert_tokens_to_ids("<end_of_turn>")
    assert end in response and end in split.stop_ids and split.references == ["great fun"]


def test_chat_needs_a_chat_template(tmp_path):
    (tmp_path / "gen").mkdir()
    (tmp_path / "gen" / "train.jsonl").write_text(json.dumps(
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}) + "\n")
    with pytest.raises(ConfigError, match="no chat template"):
        prepared(tmp_path, prompt_template="", response_field=None, fields={}, messages_field="messages")


# ---------------------------------------------------------------- malformed rows


@pytest.mark.parametrize("row, field, message", [
    ({"text": "good film"}, "answer", "column not found"),
    ({"text": "good film", "answer": 5}, "answer", "must be text, got a number"),
    ({"text": ["good"], "answer": "x"}, "text", "must be text, got a list"),
    ({"text": "good", "answer": "  "}, "answer", "empty response"),
])
def test_malformed_template_row_names_file_line_field(tmp_path, row, field, message):
    (tmp_path / "gen").mkdir()
    (tmp_path / "gen" / "train.jsonl").write_text(json.dumps({"text": "fine", "answer": "ok"}) + "\n"
                                                  + json.dumps(row) + "\n")
    with pytest.raises(DataError, match=message) as err:
        read_split_source(gen_spec(), "train", tmp_path)
    assert err.value.line == 2 and err.value.field == field and err.value.path.endswith("train.jsonl")


@pytest.mark.parametrize("messages, field, message", [
    ([], "messages", "messages is empty"),
    ("hello", "messages", "must be a list"),
    ([{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}], "messages.0.role", "unknown role"),
    ([{"role": "user", "content": 3}, {"role": "assistant", "content": "y"}], "messages.0.content", "must be text"),
    ([{"role": "user", "content": "x"}], "messages.0.role", "last message must be the assistant"),
    ([{"role": "user"}, {"role": "assistant", "content": "y"}], "messages.0.content", "needs a 'content'"),
])
def test_malformed_chat_names_file_line_field(tmp_path, messages, field, message):
    (tmp_path / "gen").mkdir()
    (tmp_path / "gen" / "train.jsonl").write_text("\n" + json.dumps({"messages": messages}) + "\n")
    spec = gen_spec(prompt_template="", response_field=None, fields={}, messages_field="messages")
    with pytest.raises(DataError, match=message) as err:
        read_split_source(spec, "train", tmp_path)
    assert err.value.line == 2 and err.value.field == field


@pytest.mark.parametrize("over, field", [
    ({"labels": {"0": " a", "1": " b"}}, "labels"),
    ({"metric": "accuracy"}, "metric"),
    ({"response_template": "{text}"}, "response_template"),  # both response_template and response_field
    ({"prompt_template": "{nope}"}, "prompt_template"),
    ({"messages_field": "m", "format": "tsv", "prompt_template": "", "response_field": None}, "messages_field"),
])
def test_invalid_generation_entry_is_refused_with_the_field(over, field):
    with pytest.raises(ConfigError, match=rf"tasks\.gen\.{field}"):
        gen_spec(**over)


def test_generation_fields_need_kind_generation():
    entry = {"train": "a.tsv", "dev": "b.tsv", "template": "{s}", "fields": {"s": "s"}, "label_field": "l",
             "labels": {"0": " a", "1": " b"}, "truncate": "prompt_left"}
    with pytest.raises(ConfigError, match=r"tasks\.t\.truncate.*kind: generation"):
        parse_task("t", entry, "m.yaml")


# ---------------------------------------------------------------- length: error, or cut and recorded


def test_over_long_row_is_an_error_naming_the_line(tmp_path):
    root = write_generation_like(tmp_path)
    long = {"text": " ".join(["good"] * 80), "answer": "good"}
    with open(root / "gen" / "train.jsonl", "a") as fh:
        fh.write(json.dumps(long) + "\n")
    with pytest.raises(DataError, match="over max_length=64.*truncate: prompt_left") as err:
        prepared(root)
    assert err.value.line == 49


def test_truncate_prompt_left_cuts_and_records(tmp_path):
    root = write_generation_like(tmp_path)
    with open(root / "gen" / "train.jsonl", "a") as fh:
        fh.write(json.dumps({"text": " ".join(["good", "bad"] * 40) + " moving", "answer": "good"}) + "\n")
    split = prepared(root, truncate="prompt_left")
    tok = tiny_tokenizer()
    ids, resp = split.input_ids[-1], split.response_ids[-1]
    assert len(ids) + len(resp) == 64 and ids[0] == tok.bos_token_id
    assert tok.decode(ids, skip_special_tokens=True).endswith("moving\nSentiment:")  # the left was cut
    assert split.truncation["count"] == 1 and split.truncation["rows"][0]["line"] == 49
    assert split.truncation["rows"][0]["kept"] == len(ids)
    assert "truncation" in split.content()
    untruncated = prepared(write_generation_like(tmp_path / "b"), truncate="prompt_left")
    assert untruncated.truncation == {"mode": "prompt_left", "rows": [], "count": 0}


# ---------------------------------------------------------------- formats


def test_csv_tsv_parquet_read_alike(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"text": "good film", "answer": "good"}, {"text": "dull, plot", "answer": "dull"}]
    d = tmp_path / "gen"
    d.mkdir()
    (d / "t.csv").write_text('text,answer\ngood film,good\n"dull, plot",dull\n')
    (d / "t.tsv").write_text("text\tanswer\ngood film\tgood\ndull, plot\tdull\n")
    pq.write_table(pa.Table.from_pylist(rows), d / "t.parquet")
    got = []
    for fmt in ("csv", "tsv", "parquet"):
        ex = read_split_source(gen_spec(format=fmt, train=f"gen/t.{fmt}"), "train", tmp_path).examples
        got.append([(e.fields["text"], e.response, e.line) for e in ex])
    assert got[0][0][:2] == got[1][0][:2] == got[2][0][:2] == ("good film", "good")
    assert [g[1][:2] for g in got] == [("dull, plot", "dull")] * 3
    assert got[2][1][2] == 2  # a Parquet row's "line" is its row number


def test_parquet_unreadable_is_one_error(tmp_path):
    (tmp_path / "gen").mkdir()
    (tmp_path / "gen" / "t.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match="not a readable Parquet"):
        read_split_source(gen_spec(format="parquet", train="gen/t.parquet"), "train", tmp_path)


# ---------------------------------------------------------------- metrics


def test_metrics_against_hand_computed_values():
    from peftops.evaluation.metrics import exact_match, rouge_l, token_f1

    pred = ["The cat sat.", "a b c d", "nothing"]
    gold = ["cat sat", "a x c", "something else"]
    assert exact_match(pred, gold) == pytest.approx(1 / 3)  # "the" and "." are normalised away
    # F1: 1; "b c d" vs "x c" (articles 'a' removed): common 1, P 1/3, R 1/2 -> 0.4; 0
    assert token_f1(pred, gold) == pytest.approx((1 + 0.4 + 0) / 3)
    # ROUGE-L (tokens lower-cased, punctuation dropped): "the cat sat" vs "cat sat": LCS 2, P 2/3, R 1
    # -> 0.8; "a b c d" vs "a x c": LCS 2 (a c), P 1/2, R 2/3 -> 4/7; 0
    assert rouge_l(pred, gold) == pytest.approx((0.8 + 4 / 7 + 0) / 3)


# ---------------------------------------------------------------- greedy generation


def _methods_models():
    from peftops.methods import get_method, make_config

    tok = tiny_tokenizer()
    out = {"base": tiny_model(vocab_size=len(tok))}
    for name, cfg in (("lora", {"r": 4}), ("prompt", {"num_virtual_tokens": 3}), ("prefix", {"num_virtual_tokens": 3}),
                      ("adapter", {}), ("bitfit", {})):
        torch.manual_seed(1)
        model = get_method(name).apply(tiny_model(vocab_size=len(tok)), make_config(name, cfg))
        with torch.no_grad():  # move every trainable tensor off its identity initialisation
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(torch.randn_like(p) * 0.3)
        out[name] = model.eval()
    return tok, out


def test_batched_left_padded_generation_equals_one_at_a_time():
    from peftops.evaluation.generate import greedy_generate

    tok, models = _methods_models()
    prompts = [tok(t)["input_ids"] for t in ("the film", "a very dull and boring plot was", "good")]
    for name, model in models.items():
        batched = greedy_generate(model, prompts, pad_id=0, stop_ids=[], max_new_tokens=6).ids
        alone = [greedy_generate(model, [p], pad_id=0, stop_ids=[], max_new_tokens=6).ids[0] for p in prompts]
        assert batched == alone, name
        assert all(len(x) == 6 for x in batched)


def test_kv_cache_loop_matches_transformers_generate_and_no_cache():
    from peftops.evaluation.generate import greedy_generate

    tok, models = _methods_models()
    model = models["base"]
    prompts = [tok(t)["input_ids"] for t in ("the film", "a very dull and boring plot was")]
    ours = greedy_generate(model, prompts, pad_id=0, stop_ids=[], max_new_tokens=5).ids
    enc = tok.pad({"input_ids": prompts}, return_tensors="pt")
    theirs = model.generate(**enc, max_new_tokens=5, do_sample=False, pad_token_id=0, eos_token_id=None)
    assert [row[enc["input_ids"].shape[1]:].tolist() for row in theirs] == ours
    for name, m in models.items():  # every method: the cached loop equals recomputing the whole row
        p = prompts[1]
        want = []
        for _ in range(4):
            batch = build_batch([p + want], [[0]], 0)
            logits = m(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                       position_ids=batch.position_ids, use_cache=False).logits
            want.append(int(logits[0, -1].argmax()))
        assert greedy_generate(m, [p], pad_id=0, stop_ids=[], max_new_tokens=4).ids[0] == want, name


def test_stop_tokens_and_strings():
    from peftops.evaluation.generate import greedy_generate

    tok, models = _methods_models()
    model = models["base"]
    prompt = [tok("the film")["input_ids"]]
    free = greedy_generate(model, prompt, pad_id=0, stop_ids=[], max_new_tokens=6, tokenizer=tok)
    first = free.ids[0][1]
    stopped = greedy_generate(model, prompt, pad_id=0, stop_ids=[first], max_new_tokens=6, tokenizer=tok)
    assert stopped.ids[0] == free.ids[0][:free.ids[0].index(first)]
    text = free.texts[0]
    word = text.split()[-1] if text.split() else None
    if word:
        cut = greedy_generate(model, prompt, pad_id=0, stop_ids=[], max_new_tokens=6, tokenizer=tok, stop=[word])
        assert word not in cut.texts[0] and text.startswith(cut.texts[0])


# ---------------------------------------------------------------- every method trains a generation task


@pytest.mark.parametrize("method_name", ["lora", "adapter", "bitfit", "prompt", "prefix", "full"])
def test_every_method_trains_a_generation_task(tmp_path, method_name):
    from peftops.config import TrainConfig
    from peftops.methods import get_method, make_config
    from peftops.training.loop import train

    root = write_generation_like(tmp_path / "data")
    split = prepared(root)
    tok = tiny_tokenizer()
    over = {"lora": {"lr": 2e-2}, "adapter": {"lr": 1e-2}, "bitfit": {"lr": 2e-2}, "full": {"lr": 5e-3},
            "prompt": {"lr": 3e-1, "num_virtual_tokens": 8}, "prefix": {"lr": 3e-1, "num_virtual_tokens": 8}}
    method = get_method(method_name)
    cfg = make_config(method_name, over[method_name])
    torch.manual_seed(0)
    model = method.apply(wide_window_model(vocab_size=len(tok)), cfg)
    result = train(model, method, cfg, split, TrainConfig(steps=16, batch_size=8, warmup_steps=1, precision="fp32"),
                   tmp_path / "run", pad_id=0, base_params=1, progress=False)
    first, last = sum(result.losses[:3]) / 3, sum(result.losses[-3:]) / 3
    # virtual tokens learn more slowly on the tiny model than weights do
    assert last < (0.92 if method_name in ("prompt", "prefix") else 0.8) * first, (method_name, result.losses)


# ---------------------------------------------------------------- through the stages


def test_stages_prepare_train_evaluate_merge_a_generation_task(tmp_path, tiny_home):
    from peftops.config import DataConfig, MergeConfig, PipelineParams, TrainConfig
    from peftops.stages import stage_evaluate, stage_merge, stage_prepare, stage_train

    home, _ = tiny_home
    root = write_generation_like(tmp_path / "data")
    manifest = tmp_path / "tasks.yaml"
    manifest.write_text(yaml.safe_dump({"tasks": {"gen": GEN_ENTRY}}))
    params = PipelineParams(
        data=DataConfig(task="gen", manifest=str(manifest), data_root=str(root), train_size=0, dev_size=0),
        train=TrainConfig(steps=10, batch_size=8, warmup_steps=1, precision="fp32"),
        methods={"lora": {"lr": 2e-2, "r": 4, "alpha": 8, "dropout": 0.0}}, merge=MergeConfig(probe_size=8),
    )
    stage_prepare(params, home)
    base = stage_evaluate(params, None, home)
    stage_train(params, "lora", home, progress=False)
    lora = stage_evaluate(params, "lora", home)
    assert lora.metric == "rougeL" and set(lora.metrics) == {"rougeL", "token_f1", "exact_match", "dev_loss"}
    assert lora.metrics["dev_loss"] < base.metrics["dev_loss"]
    run = home / "runs" / "gen" / "lora"
    samples = json.loads((run / "samples.json").read_text())
    assert samples["columns"] == ["line", "prompt", "reference", "output"] and len(samples["rows"]) == 16
    assert json.loads((run / "eval.json").read_text())["score"] == lora.score
    cert = stage_merge(params, home, "lora")
    assert cert.passed and cert.greedy_identical is True and cert.greedy_probes == 8


# ---------------------------------------------------------------- shipped tasks


@pytest.mark.skipif(not SHARED_DATA.exists(), reason="needs ../shared/data")
@pytest.mark.parametrize("name, train_n, dev_n", [("self_instruct", 175, 252), ("mrpc_paraphrase", 2474, 279)])
def test_shipped_generation_tasks_parse_and_read(name, train_n, dev_n):
    spec = load_manifest()[name]
    assert spec.kind == "generation" and spec.metric == "rougeL"
    train, dev = (read_split_source(spec, s, SHARED_DATA) for s in ("train", "dev"))
    assert len(train.examples) == train_n and len(dev.examples) == dev_n
    assert all(ex.response for ex in train.examples + dev.examples)
    if name == "self_instruct":  # never trained on the evaluation-only file
        assert "EVAL_ONLY" not in spec.train and "EVAL_ONLY" in spec.dev


def test_forgetting_reads_a_source_no_shipped_task_trains_on():
    from peftops.evaluation.forgetting import ForgettingConfig

    trained = {spec.train for spec in load_manifest().values()}
    assert ForgettingConfig().source not in trained


# ---------------------------------------------------------------- latency per generated token


def test_latency_per_generated_token_counts_what_was_generated(tmp_path):
    from dataclasses import replace

    from peftops.evaluation.evaluate import timed_batches
    from peftops.reports.tables import CompareRow

    tok = tiny_tokenizer()
    model = tiny_model(vocab_size=len(tok))
    dev = replace(prepared(write_generation_like(tmp_path), "dev"), stop_ids=[])  # never stops early
    t = timed_batches(model, dev, pad_id=0, batch_size=4, n_batches=3, warmup=1)
    assert t["s_per_token"] > 0
    # no stop token: every output is max_new_tokens long, so the two medians differ by exactly that
    assert t["s_per_example"] / t["s_per_token"] == pytest.approx(dev.max_new_tokens, rel=1e-9)
    cls = timed_batches(model, replace(dev, kind="classification", label_token_ids=[[5], [6]]), pad_id=0,
                        batch_size=4, n_batches=1)
    assert "s_per_token" not in cls  # a classification has no generated tokens
    row = CompareRow(task="gen", method="lora", metric="rougeL", score=0.5, metrics={"rougeL": 0.5},
                     pct_of_full=None, trainable_params=1, trainable_pct=0.1, peak_train_memory_mb=None,
                     memory_kind=None, train_time_s=None, train_steps=1, examples_per_s=None, adapter_bytes=None,
                     latency_ms={"1": 9.0}, general_nll_before=1.0, general_nll_after=1.1, dev_examples=16,
                     latency_ms_per_token={"1": 1.5})
    assert row.to_dict()["ms_per_token_b1"] == 1.5
    assert CompareRow.from_dict(row.to_dict()) == row
