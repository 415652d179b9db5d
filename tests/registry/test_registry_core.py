"""Publish, fetch, query and lifecycle of the registry on SQLite + file blobs."""

import json
import os
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from regtestlib import DIGEST, OTHER_DIGEST, make_adapter, make_base

from registry import (BasePinMismatch, Conflict, CorruptBlob, InvalidAdapter,
                      InvalidArgument, InvalidName, LintError, NotFound, PublishRequest,
                      Registry, RegistryError, module_shapes_from_state_dict)
from registry.adapter import adapter_id, hash_file


def test_publish_get_and_idempotent_republish(reg, tmp_path):
    d = make_adapter(tmp_path / "a", seed=1)
    v = reg.publish("sst2", d, base_digest=DIGEST, method="lora", metrics={"acc": 0.91},
                    tags={"team": "nlp"}, aliases=["staging"],
                    lineage={"mlflow_run_id": "abc", "git_commit": "deadbeef",
                             "hyperparameters": {"r": 4}})
    assert (v.task, v.version, v.status, v.method) == ("sst2", 1, "active", "lora")
    assert v.metrics == {"acc": 0.91} and v.tags == {"team": "nlp"}
    assert v.aliases == ("staging",) and v.lineage["mlflow_run_id"] == "abc"
    assert v.vllm_servable and v.lint == ()
    weights_sha = hash_file(d / "adapter_model.safetensors")[0]
    cfg = json.loads((d / "adapter_config.json").read_text())
    assert v.adapter_id == adapter_id(weights_sha, cfg)
    assert v.files["adapter_model.safetensors"]["sha256"] == weights_sha
    assert reg.get("sst2", 1) == v
    assert reg.get("sst2", alias="staging") == v
    assert reg.get("sst2") == v

    again = reg.publish("sst2", d, base_digest=DIGEST, method="lora", metrics={"acc": 0.1})
    assert again == v  # identical content returns the existing version unchanged
    assert reg.count_versions() == 1


def test_adapter_id_ignores_volatile_config_fields(reg, tmp_path):
    a = make_adapter(tmp_path / "a", seed=3)
    b = make_adapter(tmp_path / "b", seed=3, extra_config={"base_model_name_or_path": "/x",
                                                           "inference_mode": False})
    va = reg.publish("t", a, base_digest=DIGEST, method="lora")
    vb = reg.publish("t", b, base_digest=DIGEST, method="lora")
    assert va.adapter_id == vb.adapter_id and vb.version == 1
    c = make_adapter(tmp_path / "c", seed=3, extra_config={"lora_alpha": 99})
    assert reg.publish("t", c, base_digest=DIGEST, method="lora").version == 2


def test_versions_increment_and_blobs_dedupe(reg, tmp_path):
    a = make_adapter(tmp_path / "a", seed=1)
    b = make_adapter(tmp_path / "b", seed=2)
    assert [reg.publish("t", d, base_digest=DIGEST, method="lora").version
            for d in (a, b)] == [1, 2]
    # The same bytes under another task: a new version there, no new blob.
    before = sorted(reg.blobs.list())
    v = reg.publish("other", a, base_digest=DIGEST, method="lora")
    assert v.version == 1 and sorted(reg.blobs.list()) == before
    # Two configs (they differ by base_model_name_or_path) and two weights files.
    assert len(before) == 4


def test_corrupt_blob_is_an_error_never_a_silent_load(reg, tmp_path):
    v = reg.publish("t", make_adapter(tmp_path / "a", seed=1), base_digest=DIGEST,
                    method="lora")
    blob = reg.blobs.path(v.files["adapter_model.safetensors"]["sha256"])
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    dest = tmp_path / "out"
    with pytest.raises(CorruptBlob, match="corrupt"):
        reg.fetch("t", 1, dest=dest)
    assert not dest.exists()  # nothing at the destination, not even the folder
    assert not [p for p in tmp_path.iterdir() if ".fetch-" in p.name]
    # Publishing the good bytes again repairs the stored blob.
    reg.publish("t", make_adapter(tmp_path / "a", seed=1), base_digest=DIGEST, method="lora")
    reg.fetch("t", 1, dest=dest)
    assert hash_file(dest / "adapter_model.safetensors")[0] == \
        v.files["adapter_model.safetensors"]["sha256"]


def test_missing_blob_is_reported(reg, tmp_path):
    v = reg.publish("t", make_adapter(tmp_path / "a", seed=1), base_digest=DIGEST,
                    method="lora")
    reg.blobs.path(v.files["adapter_config.json"]["sha256"]).unlink()
    with pytest.raises(NotFound, match="missing"):
        reg.fetch("t", 1, dest=tmp_path / "out")


def test_fetch_writes_a_verified_peft_folder(reg, tmp_path):
    d = make_adapter(tmp_path / "a", seed=5)
    reg.publish("t", d, base_digest=DIGEST, method="lora", aliases=["production"])
    out = reg.fetch("t", alias="production", dest=tmp_path / "out", base_digest=DIGEST)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert (out / name).read_bytes() == (d / name).read_bytes()


def test_base_pin_guard(reg, tmp_path, base_dir):
    reg.register_base(make_base(tmp_path / "b2", seed=1), digest=OTHER_DIGEST, name="tiny")
    reg.publish("t", make_adapter(tmp_path / "a", seed=1), base_digest=DIGEST, method="lora")
    with pytest.raises(BasePinMismatch, match="pinned to base"):
        reg.publish("t", make_adapter(tmp_path / "b", seed=2), base_digest=OTHER_DIGEST,
                    method="lora")
    with pytest.raises(BasePinMismatch, match="trained on base"):
        reg.fetch("t", 1, dest=tmp_path / "out", base_digest=OTHER_DIGEST)
    with pytest.raises(BasePinMismatch, match="lineage"):
        reg.publish("u", make_adapter(tmp_path / "c", seed=3), base_digest=DIGEST,
                    method="lora", lineage={"base_digest": OTHER_DIGEST})
    with pytest.raises(NotFound, match="register_base"):
        reg.publish("u", make_adapter(tmp_path / "c", seed=3), base_digest="sha256:" + "0" * 64,
                    method="lora")
    # A digest already registered with other shapes is refused: digests name weights.
    other = make_base(tmp_path / "b3")
    import json as _j
    from safetensors.numpy import save_file
    save_file({"model.layers.0.self_attn.q_proj.weight": np.zeros((3, 3), np.float32)},
              str(other / "model.safetensors"))
    with pytest.raises(BasePinMismatch, match="different module shapes"):
        reg.register_base(other, digest=DIGEST)
    assert reg.register_base(base_dir, digest=DIGEST).digest == DIGEST  # idempotent
    assert _j.loads((base_dir / "config.json").read_text())["hidden_size"] == \
        reg.get_base(DIGEST).config["hidden_size"]


def test_module_shapes_from_state_dict(base_dir):
    shapes = module_shapes_from_state_dict(base_dir)
    assert shapes["model.layers.1.self_attn.k_proj"] == [16, 32]
    assert shapes["model.layers.0.mlp.down_proj"] == [32, 64]
    assert "model.norm" not in shapes  # 1-D weights are not modules with in/out features
    assert module_shapes_from_state_dict(base_dir / "model.safetensors") == shapes
    sd = {"a.weight": np.zeros((2, 3)), "b.bias": np.zeros(2)}
    assert module_shapes_from_state_dict(sd) == {"a": [2, 3]}


def test_lint_refuses_wrong_shapes_and_unknown_modules(reg, tmp_path):
    def bad_b(key, a, b):
        return (a, (b[0] + 1, b[1])) if "layers.1.self_attn.q_proj" in key else (a, b)

    with pytest.raises(LintError) as e:
        reg.publish("t", make_adapter(tmp_path / "a", seed=1, shape_fn=bad_b),
                    base_digest=DIGEST, method="lora")
    assert any("layers.1.self_attn.q_proj: lora_B has shape [33, 4]" in p
               for p in e.value.problems)
    with pytest.raises(LintError, match="'gate' does not exist"):
        reg.publish("t", make_adapter(tmp_path / "b", seed=1,
                                      extra_config={"target_modules": ["q_proj", "gate"]}),
                    base_digest=DIGEST, method="lora")
    ghost = np.zeros((4, 32), np.float32)
    with pytest.raises(LintError, match="no such module"):
        reg.publish("t", make_adapter(tmp_path / "c", seed=1, extra_tensors={
            "base_model.model.model.layers.7.self_attn.q_proj.lora_A.weight": ghost,
            "base_model.model.model.layers.7.self_attn.q_proj.lora_B.weight": ghost.T.copy()}),
            base_digest=DIGEST, method="lora")
    with pytest.raises(LintError, match="lora_A has shape"):
        reg.publish("t", make_adapter(tmp_path / "d", seed=1, extra_config={"r": 8}),
                    base_digest=DIGEST, method="lora")
    assert reg.count_versions() == 0 and list(reg.blobs.list()) == []  # nothing stored


def test_lint_flags_dora_and_modules_to_save_as_not_vllm_servable(reg, tmp_path):
    mags = {f"base_model.model.model.layers.{i}.self_attn.q_proj.lora_magnitude_vector":
            np.ones(32, np.float32) for i in range(2)}
    d = make_adapter(tmp_path / "dora", seed=1, targets=("q_proj",),
                     extra_config={"use_dora": True}, extra_tensors=mags)
    v = reg.publish("t", d, base_digest=DIGEST, method="dora")
    assert not v.vllm_servable and any("DoRA" in w for w in v.lint)
    assert reg.search(method="dora").items[0].vllm_servable is False
    with pytest.raises(LintError, match="strict"):
        reg.publish("t2", d, base_digest=DIGEST, method="dora", strict_lint=True)
    m = make_adapter(tmp_path / "mts", seed=2, extra_config={"modules_to_save": ["lm_head"]})
    v2 = reg.publish("t", m, base_digest=DIGEST, method="lora")
    assert not v2.vllm_servable and any("modules_to_save" in w for w in v2.lint)
    big = make_adapter(tmp_path / "big", seed=3, r=24)
    v3 = reg.publish("t", big, base_digest=DIGEST, method="lora")
    assert v3.vllm_servable and any("--max-lora-rank 32" in w for w in v3.lint)


def test_non_lora_adapter_is_published_but_flagged(reg, tmp_path):
    d = tmp_path / "pt"
    d.mkdir()
    from safetensors.numpy import save_file
    save_file({"prompt_embeddings": np.zeros((8, 32), np.float32)},
              str(d / "adapter_model.safetensors"))
    (d / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 8, "token_dim": 32}))
    v = reg.publish("pt", d, base_digest=DIGEST, method="prompt_tuning")
    assert not v.vllm_servable and any("not LoRA" in w for w in v.lint)


def test_invalid_adapter_folders(reg, tmp_path):
    with pytest.raises(InvalidAdapter, match="does not exist"):
        reg.publish("t", tmp_path / "nope", base_digest=DIGEST, method="lora")
    d = make_adapter(tmp_path / "a", seed=1)
    (d / "adapter_model.safetensors").unlink()
    with pytest.raises(InvalidAdapter, match="no adapter_model.safetensors"):
        reg.publish("t", d, base_digest=DIGEST, method="lora")
    d2 = make_adapter(tmp_path / "b", seed=1)
    (d2 / "sub").mkdir()
    with pytest.raises(InvalidAdapter, match="plain files only"):
        reg.publish("t", d2, base_digest=DIGEST, method="lora")


@pytest.mark.parametrize("bad", ["../x", "a/b", "..", ".hidden", "x\x00y", "tab\tname",
                                 "new\nline", "", "a" * 129, "é\u202e"])
def test_task_names_are_validated(reg, tmp_path, bad):
    with pytest.raises(InvalidName):
        reg.publish(bad, make_adapter(tmp_path / "a", seed=1), base_digest=DIGEST,
                    method="lora")


def test_other_names_are_validated(reg, tmp_path):
    d = make_adapter(tmp_path / "a", seed=1)
    for kwargs in ({"aliases": ["../prod"]}, {"aliases": ["v3"]}, {"tags": {"a\nb": "x"}},
                   {"tags": {"k": "bad\x1bvalue"}}, {"metrics": {"../m": 1.0}},
                   {"method": "lo/ra"}):
        args = {"base_digest": DIGEST, "method": "lora", **kwargs}
        with pytest.raises(InvalidName):
            reg.publish("t", d, **args)
    with pytest.raises(InvalidArgument, match="finite"):
        reg.publish("t", d, base_digest=DIGEST, method="lora", metrics={"m": float("nan")})
    assert issubclass(InvalidName, RegistryError)


def _fill(reg, tmp_path, n=25):
    out = []
    for i in range(n):
        v = reg.publish(f"task{i % 3}", make_adapter(tmp_path / f"a{i}", seed=100 + i),
                        base_digest=DIGEST, method="lora" if i % 2 else "dora-free",
                        metrics={"acc": i / n, "loss": 1 - i / n},
                        tags={"team": "a" if i % 5 else "b"})
        out.append(v)
    return out


def test_search_filters(reg, tmp_path):
    vs = _fill(reg, tmp_path)
    assert [v.version for v in reg.search(task="task1").items] == list(range(8, 0, -1))
    assert {v.method for v in reg.search(method="lora").items} == {"lora"}
    assert len(reg.search(method="lora").items) == 12
    assert len(reg.search(tag=("team", "b")).items) == 5
    hi = reg.search(metric=("acc", ">=", 0.8)).items
    assert [v.metrics["acc"] for v in hi] == sorted((v.metrics["acc"] for v in vs
                                                     if v.metrics["acc"] >= 0.8), reverse=True)
    lo = reg.search(metric=("loss", "<", 0.19)).items
    assert [round(v.metrics["loss"], 6) for v in lo] == [0.04, 0.08, 0.12, 0.16]
    reg.set_alias("task2", "production", 3)
    reg.set_alias("task0", "production", 1)
    assert {(v.task, v.version) for v in reg.search(alias="production")} == \
        {("task2", 3), ("task0", 1)}
    assert len(reg.search(task="task0", method="lora", tag=("team", "a"),
                          metric=("acc", ">", 0.0)).items) == 3
    assert len(reg.search(base_digest=DIGEST).items) == 25
    assert reg.search(base_digest=OTHER_DIGEST).items == []
    now = datetime.now(timezone.utc)
    assert len(reg.search(created_after=now - timedelta(hours=1)).items) == 25
    assert reg.search(created_before=now - timedelta(hours=1)).items == []
    assert len(reg.search(created_after=(now - timedelta(hours=1)).isoformat(),
                          created_before=now.timestamp() + 60).items) == 25
    reg.deprecate("task1", 2)
    assert [(v.task, v.version) for v in reg.search(status="deprecated")] == [("task1", 2)]
    with pytest.raises(InvalidArgument):
        reg.search(metric=("acc", "==", 1))
    with pytest.raises(InvalidArgument):
        reg.search(limit=0)


@pytest.mark.parametrize("query", [{}, {"task": "task1"}, {"method": "lora"},
                                   {"tag": ("team", "a")}, {"metric": ("acc", ">", 0.1)},
                                   {"metric": ("loss", "<=", 0.9)}, {"alias": "candidate"}])
def test_pagination_walks_every_row_once(reg, tmp_path, query):
    vs = _fill(reg, tmp_path)
    for v in vs:
        if v.version % 2:
            reg.set_alias(v.task, "candidate", v.version)  # ends on the last odd one
    expected = reg.search(limit=1000, **query).items
    seen, token = [], None
    while True:
        page = reg.search(limit=4, page_token=token, **query)
        seen += page.items
        token = page.next_page_token
        if token is None:
            break
        assert len(page.items) == 4
    assert [(v.task, v.version) for v in seen] == [(v.task, v.version) for v in expected]
    assert len(seen) == len({(v.task, v.version) for v in seen}) > 0
    if token is None and query:
        with pytest.raises(InvalidArgument, match="page_token"):
            reg.search(page_token=reg.search(limit=1, task="task0").next_page_token, **query)


def test_list_tasks_pagination(reg, tmp_path):
    _fill(reg, tmp_path, n=6)
    reg.set_alias("task1", "production", 2)
    p1 = reg.list_tasks(limit=2)
    assert [t.name for t in p1.items] == ["task0", "task1"]
    assert p1.items[1].aliases == {"production": 2} and p1.items[1].n_versions == 2
    p2 = reg.list_tasks(limit=2, page_token=p1.next_page_token)
    assert [t.name for t in p2.items] == ["task2"] and p2.next_page_token is None
    with pytest.raises(InvalidArgument):
        reg.list_tasks(page_token="garbage!")


def test_aliases_move(reg, tmp_path):
    _fill(reg, tmp_path, n=6)
    reg.set_alias("task0", "production", 1)
    assert reg.get("task0", alias="production").version == 1
    reg.set_alias("task0", "production", 2)
    assert reg.get("task0", alias="production").version == 2
    assert reg.get("task0", 1).aliases == () and reg.get("task0", 2).aliases == ("production",)
    reg.set_alias("task0", "staging", 2)
    assert reg.get("task0", 2).aliases == ("production", "staging")
    reg.delete_alias("task0", "production")
    with pytest.raises(NotFound, match="no alias 'production'"):
        reg.get("task0", alias="production")
    with pytest.raises(NotFound, match="no version 9"):
        reg.set_alias("task0", "production", 9)
    with pytest.raises(NotFound, match="does not exist"):
        reg.get("nope")


def test_tags(reg, tmp_path):
    _fill(reg, tmp_path, n=3)
    reg.set_tag("task0", 1, "reviewed", "yes")
    assert reg.get("task0", 1).tags == {"team": "b", "reviewed": "yes"}
    assert [v.task for v in reg.search(tag=("reviewed", "yes"))] == ["task0"]
    reg.set_tag("task0", 1, "reviewed", "no")
    assert reg.search(tag=("reviewed", "yes")).items == []
    reg.delete_tag("task0", 1, "reviewed")
    assert reg.get("task0", 1).tags == {"team": "b"}


def test_deprecate_delete_gc(reg, tmp_path):
    a = make_adapter(tmp_path / "a", seed=1)
    b = make_adapter(tmp_path / "b", seed=2)
    reg.publish("t", a, base_digest=DIGEST, method="lora")
    v2 = reg.publish("t", b, base_digest=DIGEST, method="lora", aliases=["production"])
    reg.publish("u", a, base_digest=DIGEST, method="lora")  # shares a's blobs
    with pytest.raises(Conflict, match="production"):
        reg.deprecate("t", 2)
    reg.set_alias("t", "production", 1)
    reg.deprecate("t", 2)
    assert reg.get("t").version == 1  # latest active
    assert reg.get("t", 2).status == "deprecated"
    with pytest.raises(Conflict, match="reactivate"):
        reg.set_alias("t", "production", 2)
    reg.reactivate("t", 2)
    assert reg.get("t").version == 2

    assert reg.gc() == 0
    reg.delete("t", 2)
    with pytest.raises(NotFound):
        reg.get("t", 2)
    with pytest.raises(Conflict, match="force"):
        reg.delete("t", 1)
    assert reg.gc() == 2  # b's weights and config; a's stay (used by t v1 and u v1)
    assert len(list(reg.blobs.list())) == 2
    reg.delete("t", 1, force=True)
    assert reg.gc() == 0  # still referenced by u v1
    reg.delete("u", 1)
    assert reg.gc() == 2 and list(reg.blobs.list()) == []
    # Version numbers are never reused.
    assert reg.publish("t", b, base_digest=DIGEST, method="lora").version == 3
    task = reg.list_tasks().items[0]
    assert (task.name, task.n_versions, task.latest_version) == ("t", 1, 3)


def test_gc_does_not_break_a_publish_in_flight(reg, tmp_path):
    """A blob uploaded but not yet committed is restored inside the publish transaction."""
    d = make_adapter(tmp_path / "a", seed=1)
    orig = reg.blobs.put
    removed = []

    def put_then_gc(src, sha, data=None):
        orig(src, sha, data)
        if src.name == "adapter_model.safetensors" and not removed:
            removed.append(reg.gc())  # runs between upload and metadata commit

    reg.blobs.put = put_then_gc
    v = reg.publish("t", d, base_digest=DIGEST, method="lora")
    reg.blobs.put = orig
    assert removed == [2]  # gc did delete both fresh blobs...
    reg.fetch("t", v.version, dest=tmp_path / "out")  # ...and publish put them back


def test_export_writes_one_peft_folder_per_adapter(reg, tmp_path):
    vs = _fill(reg, tmp_path, n=4)
    out = tmp_path / "export"
    exported = reg.export([("task0", 1), vs[1]], out)
    assert [e.name for e in exported] == ["task0-v1", "task1-v1"]
    for e in exported:
        assert (e.path / "adapter_config.json").is_file()
        assert (e.path / "adapter_model.safetensors").is_file()
        assert e.lora_module == f"{e.name}={e.path}"
    assert (out / "lora_modules.txt").read_text().splitlines() == \
        [e.lora_module for e in exported]
    page = reg.search(task="task0")
    assert [e.name for e in reg.export(page, tmp_path / "e2")] == ["task0-v2", "task0-v1"]
    with pytest.raises(BasePinMismatch):
        reg.export([("task0", 1)], tmp_path / "e3", base_digest=OTHER_DIGEST)


def test_registry_open_defaults_to_state_dir(tmp_path, monkeypatch, base_dir):
    monkeypatch.setenv("PEFTOPS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PEFTOPS_REGISTRY_DB", raising=False)
    monkeypatch.delenv("PEFTOPS_REGISTRY_BLOBS", raising=False)
    with Registry.open() as r:
        r.register_base(base_dir, digest=DIGEST)
        r.publish("t", make_adapter(tmp_path / "a", seed=1), base_digest=DIGEST, method="lora")
    assert (tmp_path / "home" / "registry" / "registry.db").is_file()
    assert (tmp_path / "home" / "registry" / "blobs" / "sha256").is_dir()
    with Registry.open() as r:  # reopening runs no migration and sees the data
        assert r.get("t").version == 1


def test_sqlite_uses_wal(reg):
    with reg.engine.connect() as c:
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_blob_store_by_scheme(tmp_path):
    from registry import FileBlobStore, open_blob_store
    assert isinstance(open_blob_store((tmp_path / "b").as_uri()), FileBlobStore)
    assert isinstance(open_blob_store(str(tmp_path / "c")), FileBlobStore)
    with pytest.raises(InvalidArgument, match="unsupported"):
        open_blob_store("gs://bucket/x")
    assert os.path.isdir(tmp_path / "b")


def test_lineage_is_recorded_and_checked(reg, tmp_path):
    lineage = {"mlflow_run_id": "0123abcd", "data_digest": "sha256:" + "1" * 64,
               "git_commit": "f" * 40, "method": "lora",
               "hyperparameters": {"r": 4, "lr": 2e-4},
               "library_versions": {"peft": "0.21.2", "transformers": "5.24.0"},
               "merge_parity": {"max_abs_diff": 1e-6, "passed": True}}
    v = reg.publish("t", make_adapter(tmp_path / "a", seed=1), base_digest=DIGEST,
                    method="lora", lineage=lineage)
    assert reg.get("t", v.version).lineage == lineage
    with pytest.raises(InvalidArgument, match="hyperparameters"):
        reg.publish("t", make_adapter(tmp_path / "b", seed=2), base_digest=DIGEST,
                    method="lora", lineage={"hyperparameters": "r=4"})
    with pytest.raises(InvalidArgument, match="JSON"):
        reg.publish("t", make_adapter(tmp_path / "b", seed=2), base_digest=DIGEST,
                    method="lora", lineage={"when": object()})


def test_lint_without_publishing_and_optimize(reg, tmp_path):
    report = reg.lint(make_adapter(tmp_path / "a", seed=1), base_digest=DIGEST)
    assert report.errors == [] and report.vllm_servable
    reg.optimize()


def test_numpy_metric_values_are_accepted(reg, tmp_path):
    v = reg.publish("t", make_adapter(tmp_path / "a", seed=1), base_digest=DIGEST,
                    method="lora", metrics={"acc": np.float32(0.5), "n": np.int64(3)})
    assert reg.get("t", v.version).metrics == {"acc": 0.5, "n": 3.0}
    assert v == reg.get("t", v.version) and hash(v) == hash(reg.get("t", v.version))


def test_versions_are_plain_frozen_dataclasses(reg, tmp_path):
    import dataclasses

    reg.publish("t", make_adapter(tmp_path / "a", seed=1), base_digest=DIGEST, method="lora",
                metrics={"acc": 0.5}, tags={"k": "v"}, aliases=["production"])
    v = reg.search(task="t").items[0]  # read back: JSON fields decoded on first access
    d = dataclasses.asdict(v)
    assert d["metrics"] == {"acc": 0.5} and d["tags"] == {"k": "v"}
    assert d["aliases"] == ("production",) and "adapter_model.safetensors" in d["files"]
    assert json.loads(json.dumps(v.to_dict()))["aliases"] == ["production"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        v.metrics = {}


def test_publish_many_records_a_batch_in_one_transaction(reg, tmp_path):
    dirs = [make_adapter(tmp_path / f"a{i}", seed=i) for i in range(4)]
    reqs = [PublishRequest("t1" if i % 2 else "t2", d, base_digest=DIGEST, method="lora",
                           metrics={"acc": 0.5 + i / 10}, tags={"i": str(i)},
                           aliases=["production"] if i == 3 else ())
            for i, d in enumerate(dirs)]
    # The same content twice in one batch: the second returns the first's version.
    reqs.append(PublishRequest("t2", dirs[0], base_digest=DIGEST, method="lora"))
    out = reg.publish_many(reqs)
    assert [(v.task, v.version, created) for v, created in out] == [
        ("t2", 1, True), ("t1", 1, True), ("t2", 2, True), ("t1", 2, True), ("t2", 1, False)]
    assert out[4][0] == out[0][0] == reg.get("t2", 1)
    assert reg.get("t1", alias="production") == out[3][0]
    assert out[2][0].metrics == {"acc": 0.7} and reg.get("t2", 2).tags == {"i": "2"}
    assert reg.count_versions() == 4
    assert reg.publish_many([]) == []


def test_publish_many_is_all_or_nothing(reg, tmp_path):
    good = [make_adapter(tmp_path / f"g{i}", seed=i) for i in range(3)]
    bad = make_adapter(tmp_path / "bad", seed=9, targets=("q_proj",),
                       extra_config={"target_modules": ["gate"]})
    reqs = [PublishRequest("t", d, base_digest=DIGEST, method="lora") for d in good]
    reqs.insert(2, PublishRequest("t", bad, base_digest=DIGEST, method="lora"))
    with pytest.raises(LintError, match=str(bad)):
        reg.publish_many(reqs)
    assert reg.count_versions() == 0  # the good ones before the bad one were not recorded
    with pytest.raises(InvalidName):
        reg.publish_many([reqs[0], PublishRequest("../t", good[1], base_digest=DIGEST,
                                                  method="lora")])
    assert reg.count_versions() == 0


def _scan_then_rewrite(monkeypatch, weights):
    """Make publish's scan see the folder as it is, then the weights change on disk."""
    import registry.store as store

    real = store.scan_adapter

    def scan(path):
        folder = real(path)
        weights.write_bytes(weights.read_bytes()[:-4] + b"\x00\x00\x80\x3f")  # last float -> 1.0
        return folder
    monkeypatch.setattr(store, "scan_adapter", scan)


def test_publish_stores_the_bytes_it_scanned(reg, tmp_path, monkeypatch):
    d = make_adapter(tmp_path / "a", seed=11)
    weights = d / "adapter_model.safetensors"
    scanned = weights.read_bytes()
    _scan_then_rewrite(monkeypatch, weights)
    v = reg.publish("t", d, base_digest=DIGEST, method="lora")
    assert weights.read_bytes() != scanned
    out = reg.fetch("t", v.version, dest=tmp_path / "out")
    # What was hashed, linted and recorded is what was stored: small files are read once.
    assert (out / "adapter_model.safetensors").read_bytes() == scanned


def test_a_large_file_changed_after_its_scan_is_refused(reg, tmp_path, monkeypatch):
    import registry.adapter

    monkeypatch.setattr(registry.adapter, "KEEP_BYTES", 0)  # every file streamed, as large ones are
    d = make_adapter(tmp_path / "a", seed=12)
    _scan_then_rewrite(monkeypatch, d / "adapter_model.safetensors")
    with pytest.raises(CorruptBlob, match="adapter_model.safetensors: sha256 is"):
        reg.publish("t", d, base_digest=DIGEST, method="lora")
    assert reg.count_versions() == 0


def test_raw_statements_keep_sqlalchemy_errors_and_roll_back(reg, tmp_path):
    from sqlalchemy.exc import IntegrityError

    from registry import store
    from registry.engine import raw_write_tx
    from registry.rawsql import RawTx

    v = reg.publish("t", make_adapter(tmp_path / "a", seed=13), base_digest=DIGEST, method="lora",
                    tags={"team": "a"})
    with pytest.raises(IntegrityError):  # what publish's retry loop catches
        with raw_write_tx(reg.engine) as conn:
            tx = RawTx(conn, reg.engine.dialect)
            tx.run(store._BUMP_TASK, {"b_tid": 1, "b_version": 7, "b_now": datetime(2030, 1, 1)})
            tx.many(store._INSERT_TAG, [{"version_id": 1, "key": "team", "value": "b"}])
    # The bump before the failing insert was rolled back with it.
    assert reg.list_tasks().items[0].latest_version == 1
    assert reg.get("t", 1) == v
