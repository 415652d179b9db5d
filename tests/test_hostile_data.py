"""Hostile input: each refusal is one line naming the file (and line and field), never a
traceback, never the rejected file's content."""

import hashlib
import json
import os

import pytest

from peftops.config import DataConfig, load_params
from peftops.data import reading
from peftops.data.manifest import TaskSpec, data_path, load_manifest
from peftops.data.prepared import CHARS_PER_TOKEN, load_prepared, prepare, tokenize_split
from peftops.data.reading import read_split
from peftops.errors import ConfigError, DataError
from tiny import tiny_tokenizer

BOMB = ('a: &a ["x","x","x","x","x","x","x","x","x"]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n'
        'c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n'
        'e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n'
        'g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\nh: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]\n'
        'i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]\n')


def spec(**kw):
    base = dict(name="t", train="train.tsv", dev="dev.tsv", template="S: {s}\nL:", labels={"0": " no", "1": " yes"},
                label_field="label", fields={"s": "sentence"})
    return TaskSpec(**{**base, **kw})


# ---------------------------------------------------------------- 7: YAML alias bombs


def test_yaml_alias_bomb_in_params_is_refused_before_expansion(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text(BOMB)
    with pytest.raises(ConfigError, match=r"params.yaml: .*not valid YAML \(line \d+\): YAML aliases expand this "
                                          r"document past 100,000 values"):
        load_params(p)


def test_yaml_alias_bomb_in_a_manifest_is_refused(tmp_path):
    m = tmp_path / "tasks.yaml"
    m.write_text("tasks:\n" + BOMB.replace("\n", "\n  ").replace("a: &a", "  a: &a", 1))
    with pytest.raises(ConfigError, match=r"tasks.yaml: .*YAML aliases expand this document"):
        load_manifest(m)
    m.write_text("tasks: &t\n  u: *t\n")
    with pytest.raises(ConfigError, match=r"tasks.yaml: .*line 1\): a YAML alias refers to a node that contains it"):
        load_manifest(m)


def test_modest_aliases_as_safe_dump_writes_them_are_fine(tmp_path):
    import yaml

    labels = {"0": " no", "1": " yes"}
    entry = {"train": "a.tsv", "dev": "b.tsv", "template": "{x}", "label_field": "y", "fields": {"x": "x"}}
    m = tmp_path / "tasks.yaml"
    m.write_text(yaml.safe_dump({"tasks": {"t": {**entry, "labels": labels}, "u": {**entry, "labels": labels}}}))
    assert "&id001" in m.read_text()
    assert load_manifest(m)["u"].labels == labels


# ---------------------------------------------------------------- 8: a huge row


def test_a_row_longer_than_max_length_can_hold_is_refused_before_tokenizing(tmp_path):
    huge = "good " * (64 * CHARS_PER_TOKEN)
    (tmp_path / "train.tsv").write_text(f"sentence\tlabel\nfine\t1\n{huge}\t0\n")
    source, examples = read_split(spec(), "train", tmp_path)

    calls = []
    tok = tiny_tokenizer()

    def counting(texts, **kw):
        calls.append(texts)
        return tok(texts, **kw)

    with pytest.raises(DataError) as err:
        tokenize_split(spec(), "train", examples, counting, source, max_length=64)
    text = str(err.value)
    assert "train.tsv, line 3, field 'sentence'" in text and f"{CHARS_PER_TOKEN} characters per token" in text
    assert "good good" not in text and len(text) < 400
    assert all(isinstance(c, str) for c in calls)  # only the verbalizers were tokenized


# ---------------------------------------------------------------- 9: the digest is of the parsed bytes


def test_prepared_digest_is_of_the_bytes_that_were_parsed(tmp_path, monkeypatch):
    rows = "sentence\tlabel\ngood film\t1\nbad film\t0\n"
    (tmp_path / "train.tsv").write_text(rows)
    (tmp_path / "dev.tsv").write_text(rows)
    manifest = tmp_path / "tasks.yaml"
    manifest.write_text("tasks:\n  t:\n    train: train.tsv\n    dev: dev.tsv\n    template: 'S: {s}'\n"
                        "    labels: {'0': ' no', '1': ' yes'}\n    label_field: label\n    fields: {s: sentence}\n")
    real = reading.read_source

    def read_then_replace(path, **kw):  # the file is replaced right after it was read
        data = real(path, **kw)
        path.write_text("sentence\tlabel\nsomething else\t1\n")
        return data

    monkeypatch.setattr(reading, "read_source", read_then_replace)
    cfg = DataConfig(task="t", manifest=str(manifest), data_root=str(tmp_path), train_size=0, dev_size=0)
    prep = prepare(cfg, tiny_tokenizer(), tmp_path / "out")
    split = load_prepared(prep.train_path)
    assert split.source_sha256 == hashlib.sha256(rows.encode()).hexdigest() and len(split) == 2


# ---------------------------------------------------------------- 10: values silently turned into text


@pytest.mark.parametrize("value, kind", [(None, "null"), (5, "a number"), (["x"], "a list"), ({"a": 1}, "an object")])
def test_jsonl_non_text_in_a_text_field_is_refused(tmp_path, value, kind):
    rows = [{"s": "fine", "label": 1}, {"s": value, "label": 0}]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=rf"train.jsonl, line 2, field 's': a text field must be text, got {kind}$"):
        read_split(spec(format="jsonl", train="train.jsonl", fields={"s": "s"}), "train", tmp_path)


@pytest.mark.parametrize("label, ok", [(1, True), ("1", True), (" 1 ", True), (True, False), (1.0, False), (None, False)])
def test_jsonl_labels_are_text_or_integers(tmp_path, label, ok):
    (tmp_path / "train.jsonl").write_text(json.dumps({"s": "fine", "label": label}) + "\n")
    task = spec(format="jsonl", train="train.jsonl", fields={"s": "s"})
    if ok:
        assert read_split(task, "train", tmp_path)[1][0].label == 1
    else:
        with pytest.raises(DataError, match=r"line 1, field 'label': the label must be text"):
            read_split(task, "train", tmp_path)


def test_nul_bytes_are_refused_with_line_and_field(tmp_path):
    (tmp_path / "train.tsv").write_text("sentence\tlabel\nfine\t1\nbad\x00film\t0\n")
    with pytest.raises(DataError, match=r"train.tsv, line 3, field 'sentence': a text field contains a NUL byte"):
        read_split(spec(), "train", tmp_path)
    (tmp_path / "train.tsv").write_text("sentence\tlabel\nfine\t1\x00\n")
    with pytest.raises(DataError, match=r"line 2, field 'label': the label contains a NUL byte"):
        read_split(spec(), "train", tmp_path)


def test_label_whitespace_is_stripped_and_manifest_labels_must_not_carry_it(tmp_path):
    (tmp_path / "train.tsv").write_text("sentence\tlabel\nfine \t 1 \n")
    assert read_split(spec(), "train", tmp_path)[1][0].label == 1
    with pytest.raises(ConfigError, match=r"'tasks.t.labels': label value ' 1' is empty or has surrounding"):
        spec(labels={"0": " no", " 1": " yes"})


def test_a_directory_or_a_symlink_loop_is_one_line(tmp_path):
    (tmp_path / "train.tsv").mkdir()
    with pytest.raises(DataError, match=r"train.tsv: is a directory, not a data file$"):
        read_split(spec(), "train", tmp_path)
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    with pytest.raises(DataError, match=r"a: cannot be read: Too many levels of symbolic links$"):
        read_split(spec(dev="a"), "dev", tmp_path)


def test_relative_paths_stay_inside_the_data_root_absolute_ones_are_allowed(tmp_path):
    secret = tmp_path / "secret.tsv"
    secret.write_text("sentence\tlabel\nthe secret text\t1\n")
    root = tmp_path / "data" / "root"
    root.mkdir(parents=True)
    climbing = "../../secret.tsv"
    with pytest.raises(DataError) as err:
        read_split(spec(train=climbing), "train", root)
    assert "must stay inside the data root" in str(err.value) and "secret text" not in str(err.value)
    assert data_path("sub/../x.tsv", root) == root / "x.tsv"
    assert read_split(spec(train=str(secret)), "train", root)[1][0].fields["s"] == "the secret text"
    with pytest.raises(DataError, match="must stay inside the data root"):
        data_path("../../../../etc/passwd", root)


def test_a_csv_error_is_one_line(tmp_path):
    import csv

    (tmp_path / "train.csv").write_text("sentence,label\n" + "x" * (csv.field_size_limit() + 10) + ",1\n")
    with pytest.raises(DataError, match=r"train.csv, line 2: not valid CSV"):
        read_split(spec(format="csv", train="train.csv"), "train", tmp_path)
