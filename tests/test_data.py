"""Strict parsing of the real GLUE files and clear errors on bad input."""

import pytest

from tiny import SHARED_DATA
from peftops.data.manifest import TaskSpec, get_task
from peftops.data.prepared import load_prepared, save_prepared, tokenize_split
from peftops.data.reading import read_split
from peftops.errors import ConfigError, DataError
from tiny import tiny_tokenizer

needs_shared = pytest.mark.skipif(not SHARED_DATA.exists(), reason="../shared/data not present")


def spec(**kw):
    base = dict(name="t", train="train.tsv", dev="dev.tsv", template="S: {s}\nL:", labels={"0": " no", "1": " yes"},
                label_field="label", fields={"s": "sentence"})
    base.update(kw)
    return TaskSpec(**base)


@needs_shared
def test_sst2_counts_match_glue():
    task = get_task("sst2")
    _, train = read_split(task, "train", SHARED_DATA)
    _, dev = read_split(task, "dev", SHARED_DATA)
    assert (len(train), len(dev)) == (67349, 872)
    assert sum(e.label for e in dev) == 444
    assert not dev[0].fields["sentence"].endswith(" ")  # GLUE's space before the tab is stripped


@needs_shared
def test_mrpc_bom_and_bare_quotes_keep_every_row():
    mrpc = spec(train="glue/MRPC/train.tsv", dev="glue/MRPC/dev.tsv", fields={"a": "#1 String", "b": "#2 String"},
                label_field="Quality", template="{a} / {b}?")
    _, train = read_split(mrpc, "train", SHARED_DATA)
    _, dev = read_split(mrpc, "dev", SHARED_DATA)
    assert (len(train), len(dev)) == (3668, 408)
    assert any('"' in e.fields["a"] for e in train)


@needs_shared
def test_cola_without_header_by_column_index():
    cola = spec(train="glue/CoLA/train.tsv", dev="glue/CoLA/dev.tsv", header=False, fields={"s": 3}, label_field=1)
    _, dev = read_split(cola, "dev", SHARED_DATA)
    assert len(dev) == 1043 and sum(e.label for e in dev) == 721


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(DataError, match="train.tsv: data file not found"):
        read_split(spec(), "train", tmp_path)


def test_wrong_column_count_names_file_and_line(tmp_path):
    (tmp_path / "train.tsv").write_text("sentence\tlabel\ngood film\t1\nno tab here\n")
    with pytest.raises(DataError) as err:
        read_split(spec(), "train", tmp_path)
    assert "train.tsv, line 3" in str(err.value) and "expected 2 columns" in str(err.value)


def test_unknown_label_names_line_and_field(tmp_path):
    (tmp_path / "train.tsv").write_text("sentence\tlabel\ngood film\t1\nbad film\t7\n")
    with pytest.raises(DataError) as err:
        read_split(spec(), "train", tmp_path)
    assert "line 3, field 'label'" in str(err.value) and "'7'" in str(err.value)


def test_empty_split_is_an_error(tmp_path):
    (tmp_path / "dev.tsv").write_text("sentence\tlabel\n")
    with pytest.raises(DataError, match="dev split has no examples"):
        read_split(spec(), "dev", tmp_path)


def test_too_long_prompt_is_an_error_not_a_truncation(tmp_path):
    (tmp_path / "train.tsv").write_text("sentence\tlabel\n" + " ".join(["good"] * 300) + "\t1\n")
    source, examples = read_split(spec(), "train", tmp_path)
    with pytest.raises(DataError, match="line 2.*over max_length=64"):
        tokenize_split(spec(), "train", examples, tiny_tokenizer(), source, max_length=64)


def test_prepared_split_round_trips_and_detects_tampering(tmp_path):
    (tmp_path / "train.tsv").write_text("sentence\tlabel\ngood film\t1\nbad film\t0\n")
    source, examples = read_split(spec(), "train", tmp_path)
    prepared = save_prepared(tokenize_split(spec(), "train", examples, tiny_tokenizer(), source, 64), tmp_path / "p.json")
    again = load_prepared(tmp_path / "p.json")
    assert again.digest == prepared.digest and again.input_ids == prepared.input_ids and again.labels == [1, 0]
    (tmp_path / "p.json").write_text((tmp_path / "p.json").read_text().replace('"labels":[1,0]', '"labels":[1,1]'))
    with pytest.raises(DataError, match="does not match its digest"):
        load_prepared(tmp_path / "p.json")


def test_manifest_validation_names_entry_and_field(tmp_path):
    from peftops.data.manifest import load_manifest

    m = tmp_path / "tasks.yaml"
    m.write_text("tasks:\n  mine:\n    train: a.tsv\n    dev: b.tsv\n    template: '{x}'\n    labels: {a: ' A', b: ' B'}\n"
                 "    label_field: y\n    fields: {z: z}\n")
    with pytest.raises(ConfigError) as err:
        load_manifest(m)
    assert "tasks.mine.template" in str(err.value) and str(m) in str(err.value)


def test_a_manifest_is_parsed_once_per_content_and_again_when_edited(tmp_path, monkeypatch):
    """Every stage of every fleet task looks its entry up: an unchanged manifest is not re-parsed,
    an edited one is, and a caller extending the returned mapping does not change the next one."""
    import peftops.data.manifest as manifest

    parses = []
    real = manifest.load_yaml
    monkeypatch.setattr(manifest, "load_yaml", lambda p, what: parses.append(p) or real(p, what))
    m = tmp_path / "tasks.yaml"
    entry = ("  {name}:\n    train: a.tsv\n    dev: b.tsv\n    template: '{{sentence}}'\n    fields: {{sentence: s}}\n"
             "    labels: {{'0': ' no', '1': ' yes'}}\n    label_field: label\n")
    m.write_text("tasks:\n" + entry.format(name="one"))
    first = manifest.load_manifest(m)
    first["intruder"] = first["one"]
    assert sorted(manifest.load_manifest(m)) == ["one"] and len(parses) == 1
    for _ in range(3):
        assert get_task("one", m).name == "one"
    assert parses.count(m) == 1  # the embedded manifest may be parsed once too, never this one again
    m.write_text("tasks:\n" + entry.format(name="one") + entry.format(name="two"))
    assert sorted(manifest.load_manifest(m)) == ["one", "two"] and parses.count(m) == 2
