"""The lint verdict cache: a hit only on byte-identical inputs, the same verdict as a fresh lint."""

import json
import struct

import pytest

from regtestlib import DIGEST, OTHER_DIGEST, make_adapter

import registry.lint as lint_mod
from registry.adapter import CONFIG_FILE, WEIGHTS_FILE, scan_adapter
from registry.errors import InvalidAdapter, LintError
from registry.lint import LintCache, lint_adapter
from registry.shapes import read_safetensors_header


@pytest.fixture
def reads(monkeypatch):
    """Counts the header reads behind the cache (a hit reads no header)."""
    calls = []
    real = lint_mod.read_safetensors_header

    def counted(path, data=None):
        calls.append(path)
        return real(path, data)

    monkeypatch.setattr(lint_mod, "read_safetensors_header", counted)
    return calls


def _same_config(folder):
    """PEFT writes the base's path into the config; a fleet's adapters share it."""
    cfg = json.loads((folder / CONFIG_FILE).read_text())
    cfg["base_model_name_or_path"] = "/snapshots/base"
    (folder / CONFIG_FILE).write_text(json.dumps(cfg))
    return folder


def _lint(cache, folder, shapes, digest=DIGEST):
    f = scan_adapter(folder)
    return cache.lint(str(folder / WEIGHTS_FILE), f.data.get(WEIGHTS_FILE),
                      f.data.get(CONFIG_FILE), f.config, digest, shapes)


def _fresh(folder, shapes):
    f = scan_adapter(folder)
    return lint_adapter(f.config, read_safetensors_header(folder / WEIGHTS_FILE), shapes)


def _verdict(rep):
    return rep.errors, rep.warnings, rep.notes


# (case name, builder of the second adapter given tmp_path, hit expected)
CASES = [
    ("other weights, same structure", lambda p: make_adapter(p, seed=2), True),
    ("another rank", lambda p: make_adapter(p, seed=2, r=8), False),
    ("another target set", lambda p: make_adapter(p, seed=2, targets=("q_proj", "k_proj")),
     False),
    ("the config differs only in a field lint ignores",
     lambda p: make_adapter(p, seed=2, extra_config={"lora_dropout": 0.1}), False),
    ("a wrong shape (a verdict with errors)",
     lambda p: make_adapter(p, seed=2, shape_fn=lambda k, a, b: (a, (b[0] + 1, b[1]))), False),
]


@pytest.mark.parametrize("name,build,hit", CASES, ids=[c[0] for c in CASES])
def test_a_hit_only_on_identical_header_and_config(reg, tmp_path, reads, name, build, hit):
    shapes = reg.get_base(DIGEST).module_shapes
    cache = LintCache()
    first = _same_config(make_adapter(tmp_path / "a", seed=1))
    second = _same_config(build(tmp_path / "b"))
    _lint(cache, first, shapes)
    reads.clear()
    got = _lint(cache, second, shapes)
    assert (reads == []) is hit
    assert _verdict(got) == _verdict(_fresh(second, shapes))  # a hit is the fresh verdict


def test_another_base_or_a_changed_length_is_linted_afresh(reg, tmp_path, reads):
    shapes = reg.get_base(DIGEST).module_shapes
    cache = LintCache()
    a = _same_config(make_adapter(tmp_path / "a", seed=1))
    _lint(cache, a, shapes)
    reads.clear()
    _lint(cache, a, shapes, digest=OTHER_DIGEST)
    assert len(reads) == 1  # the base is part of the key
    # The same header with a byte of data missing: the reader refuses it, as without a cache.
    w = a / WEIGHTS_FILE
    w.write_bytes(w.read_bytes()[:-1])
    with pytest.raises(InvalidAdapter, match="cover"):
        _lint(cache, a, shapes)


def test_hits_are_copies_and_the_cache_is_bounded(reg, tmp_path, monkeypatch):
    shapes = reg.get_base(DIGEST).module_shapes
    cache = LintCache()
    d = _same_config(make_adapter(tmp_path / "a", seed=1, r=24))  # a note: the vLLM rank
    first = _lint(cache, d, shapes)
    first.notes.append("changed by the caller")
    again = _lint(cache, d, shapes)
    assert again.notes == _fresh(d, shapes).notes and len(again.notes) == 1
    monkeypatch.setattr(LintCache, "MAX_ENTRIES", 3)
    for r in (1, 2, 3, 4, 5):
        _lint(cache, _same_config(make_adapter(tmp_path / f"r{r}", seed=r, r=r)), shapes)
    assert len(cache._hits) == 3


def test_large_inputs_are_not_kept(reg, tmp_path, reads, monkeypatch):
    shapes = reg.get_base(DIGEST).module_shapes
    cache = LintCache()
    d = _same_config(make_adapter(tmp_path / "a", seed=1))
    (n,) = struct.unpack("<Q", (d / WEIGHTS_FILE).read_bytes()[:8])
    monkeypatch.setattr(LintCache, "MAX_KEY_BYTES", n)  # header alone fits, with the config not
    _lint(cache, d, shapes)
    _lint(cache, d, shapes)
    assert len(reads) == 2 and cache._hits == {}


def test_publish_refuses_a_misfit_every_time(reg, tmp_path):
    """The verdict with errors, once cached, still refuses: nothing recorded or stored."""
    bad = lambda k, a, b: (a, (b[0] + 1, b[1]))  # noqa: E731
    for seed in (1, 2):
        d = _same_config(make_adapter(tmp_path / f"a{seed}", seed=seed, shape_fn=bad))
        with pytest.raises(LintError, match="lora_B has shape"):
            reg.publish("t", d, base_digest=DIGEST, method="lora")
    assert len(reg._lint_cache._hits) == 1
    assert reg.count_versions() == 0 and list(reg.blobs.list()) == []
    ok = [reg.publish("t", _same_config(make_adapter(tmp_path / f"ok{s}", seed=s)),
                      base_digest=DIGEST, method="lora") for s in (3, 4)]
    assert [v.version for v in ok] == [1, 2] and ok[0].lint == ok[1].lint
