"""Tasks as data: the GLUE entries, manifest validation messages, a user's own CSV/JSONL task, metrics."""

import json

import pytest

from tiny import SHARED_DATA
from peftops.data.manifest import get_task, load_manifest
from peftops.data.reading import read_split
from peftops.errors import ConfigError
from peftops.evaluation.metrics import accuracy, compute, f1, matthews
from tiny import sentence

needs_shared = pytest.mark.skipif(not SHARED_DATA.exists(), reason="../shared/data not present")


# ---------------------------------------------------------------- metrics, by hand


def test_binary_metrics_against_hand_computed_values():
    pred, gold = [1, 1, 1, 0], [1, 0, 1, 0]  # tp=2 fp=1 tn=1 fn=0
    assert accuracy(pred, gold) == 0.75
    assert f1(pred, gold) == pytest.approx(2 * 2 / (2 * 2 + 1 + 0))  # 0.8
    assert matthews(pred, gold) == pytest.approx((2 * 1 - 1 * 0) / (3 * 2 * 2 * 1) ** 0.5)  # 0.5774
    assert matthews([0, 1, 0, 1], [1, 0, 1, 0]) == pytest.approx(-1.0)
    assert f1([0, 0], [1, 0]) == 0.0  # no true positive
    assert compute(["f1", "accuracy"], pred, gold) == {"f1": pytest.approx(0.8), "accuracy": 0.75}


def test_multiclass_matthews_by_hand_and_binary_agreement():
    # n=6, 3 correct, every class predicted twice and gold twice:
    # (3*6 - 12) / sqrt((36 - 12) * (36 - 12)) = 6 / 24
    assert matthews([0, 1, 2, 0, 1, 2], [0, 1, 2, 1, 2, 0]) == pytest.approx(0.25)
    assert matthews([2, 2, 2], [0, 1, 2]) == 0.0  # constant prediction: undefined -> 0


def test_metrics_refuse_mismatched_lengths():
    with pytest.raises(ValueError, match="3 predictions for 2 gold"):
        accuracy([1, 0, 1], [1, 0])


# ---------------------------------------------------------------- the shipped GLUE entries


def test_manifest_ships_the_four_glue_tasks_with_glue_metrics():
    tasks = load_manifest()
    assert {"sst2", "cola", "mrpc", "rte"} <= set(tasks)
    assert tasks["sst2"].metric == "accuracy"
    assert tasks["cola"].metric == "matthews" and tasks["cola"].header is False
    assert tasks["mrpc"].metric == "f1" and "accuracy" in tasks["mrpc"].metrics
    assert tasks["rte"].metric == "accuracy" and tasks["rte"].labels == {"entailment": " yes", "not_entailment": " no"}


@needs_shared
@pytest.mark.parametrize("task, sizes, positives", [
    ("cola", (8551, 1043), (6023, 721)),
    ("mrpc", (3668, 408), (2474, 279)),
    ("rte", (2490, 277), (1241, 131)),  # label index 1 is not_entailment
])
def test_glue_entries_read_every_row(task, sizes, positives):
    spec = get_task(task)
    for split, n, pos in zip(("train", "dev"), sizes, positives):
        _, ex = read_split(spec, split, SHARED_DATA)
        assert len(ex) == n and sum(e.label for e in ex) == pos
    if task == "mrpc":
        assert any('"' in e.fields["sentence1"] for e in ex)  # bare quotes kept, never CSV-unquoted


@needs_shared
@pytest.mark.slow
def test_glue_verbalizers_are_single_tokens_and_every_prompt_fits(real_snapshot):
    from peftops.model.snapshot import load_tokenizer

    tok = load_tokenizer(real_snapshot[1])
    for name in ("sst2", "cola", "mrpc", "rte"):
        spec = get_task(name)
        for v in spec.verbalizers:
            assert len(tok(v, add_special_tokens=False)["input_ids"]) == 1, (name, v)
        limit = spec.max_length or 256
        for split in ("train", "dev"):
            _, ex = read_split(spec, split, SHARED_DATA)
            longest = max(len(ids) for ids in tok([spec.template.format(**e.fields) for e in ex])["input_ids"])
            assert longest + 1 <= limit, (name, split, longest)


# ---------------------------------------------------------------- manifest validation messages

GOOD = {"train": "a.tsv", "dev": "b.tsv", "template": "{x}", "labels": {"0": " A", "1": " B"},
        "label_field": "y", "fields": {"x": "x"}}


@pytest.mark.parametrize("change, field, message", [
    ({"format": "xlsx"}, "format", "'xlsx' is not one of tsv, csv, jsonl"),
    ({"metric": "bleu"}, "metric", "'bleu' is not one of"),
    ({"metrics": "accuracy"}, "metrics", "must be a list"),
    ({"metrics": ["auc"]}, "metrics", "'auc' is not one of"),
    ({"labels": {"0": " A"}}, "labels", "at least two label values"),
    ({"labels": {"0": " A", "1": " A"}}, "labels", "distinct"),
    ({"labels": {"0": " A", "1": ""}}, "labels.1", "non-empty"),
    ({"labels": {True: " yes", False: " no"}}, "labels", "quote it"),
    ({"labels": {"a": " A", "b": " B", "c": " C"}, "metric": "f1"}, "metric", "exactly two labels"),
    ({"template": "{x} {z}"}, "template", "placeholder {z} has no entry in 'fields'"),
    ({"header": "no"}, "header", "true or false"),
    ({"header": False}, "fields.x", "0-based index when header is false"),
    ({"format": "jsonl", "label_field": 2}, "label_field", "key name"),
    ({"fields": {"x": -1}}, "fields.x", "column name or a 0-based column index"),
    ({"max_length": 4}, "max_length", ">= 8"),
    ({"train": ""}, "train", "file path"),
    ({"colour": "blue"}, "colour", "unknown field"),
    ({"dev": None}, "dev", "file path"),
])
def test_manifest_errors_name_the_entry_and_the_field(tmp_path, change, field, message):
    import yaml

    entry = {**GOOD, **change}
    m = tmp_path / "tasks.yaml"
    m.write_text(yaml.safe_dump({"tasks": {"mine": entry}}))
    with pytest.raises(ConfigError) as err:
        load_manifest(m)
    text = str(err.value)
    assert f"'tasks.mine.{field}'" in text and message in text and str(m) in text


@pytest.mark.parametrize("missing", ["train", "dev", "template", "labels", "label_field", "fields"])
def test_missing_required_field_is_named(tmp_path, missing):
    import yaml

    m = tmp_path / "tasks.yaml"
    m.write_text(yaml.safe_dump({"tasks": {"mine": {k: v for k, v in GOOD.items() if k != missing}}}))
    with pytest.raises(ConfigError, match=f"tasks.mine.{missing}'.*required field is missing"):
        load_manifest(m)


def test_bare_yes_no_label_keys_in_yaml_are_caught(tmp_path):
    m = tmp_path / "tasks.yaml"
    m.write_text("tasks:\n  mine:\n    train: a\n    dev: b\n    template: '{x}'\n    labels: {yes: ' Y', no: ' N'}\n"
                 "    label_field: y\n    fields: {x: x}\n")
    with pytest.raises(ConfigError, match="read as a boolean; quote it"):
        load_manifest(m)


# ---------------------------------------------------------------- a user's own task, by manifest entry alone


def _write_user_files(root):
    import csv
    import random

    rng = random.Random(3)
    with open(root / "reviews.csv", "w", newline="") as fh:  # CSV quoting: commas inside a field
        w = csv.writer(fh)
        w.writerow(["id", "text", "sentiment"])
        for i in range(48):
            label = i % 2
            w.writerow([i, sentence(rng, label).replace(" ", ", ", 1), "pos" if label else "neg"])
    with open(root / "reviews.jsonl", "w") as fh:
        for i in range(48):
            label = i % 2
            fh.write(json.dumps({"review": sentence(rng, label), "stars": label}) + "\n")
    (root / "tasks.yaml").write_text(
        "tasks:\n"
        "  my_csv:\n"
        "    format: csv\n    train: reviews.csv\n    dev: reviews.csv\n"
        "    fields: {sentence: text}\n    label_field: sentiment\n"
        "    template: \"Review: {sentence}\\nSentiment:\"\n"
        "    labels: {neg: \" negative\", pos: \" positive\"}\n"
        "    metric: f1\n    metrics: [accuracy]\n"
        "  my_jsonl:\n"
        "    format: jsonl\n    train: reviews.jsonl\n    dev: reviews.jsonl\n"
        "    fields: {sentence: review}\n    label_field: stars\n"
        "    template: \"Review: {sentence}\\nSentiment:\"\n"
        "    labels: {0: \" negative\", 1: \" positive\"}\n"
        "    metric: matthews\n")
    return root / "tasks.yaml"


@pytest.mark.parametrize("task, metric", [("my_csv", "f1"), ("my_jsonl", "matthews")])
def test_users_own_csv_and_jsonl_tasks_run_by_manifest_entry_alone(tiny_home, tmp_path, task, metric):
    from peftops import stages as P
    from peftops.config import DataConfig, PipelineParams, TrainConfig

    home, _ = tiny_home
    root = tmp_path / "mine"
    root.mkdir()
    manifest = _write_user_files(root)
    spec = get_task(task, manifest)
    _, rows = read_split(spec, "train", root)
    if task == "my_csv":
        assert ", " in rows[0].fields["sentence"]  # the quoted comma survived
    params = PipelineParams(
        data=DataConfig(task=task, manifest=str(manifest), data_root=str(root), train_size=0, dev_size=0),
        train=TrainConfig(steps=12, batch_size=8, warmup_steps=1),
        methods={"lora": {"lr": 2e-2, "r": 4, "alpha": 8, "dropout": 0.0}},
    )
    prep = P.stage_prepare(params, home)
    assert (prep.train_size, prep.dev_size) == (48, 48)
    P.stage_train(params, "lora", home, progress=False)
    ev = P.stage_evaluate(params, "lora", home)
    assert ev.metric == metric and ev.n == 48 and set(ev.metrics) >= {metric}
    assert (home / "runs" / task / "lora" / "eval.json").exists()
