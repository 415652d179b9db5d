"""Times come back from every read as aware UTC datetimes, to the microsecond, on both
backends (they are stored naive, in UTC)."""

from datetime import timezone

from regtestlib import DIGEST, make_adapter, make_base

from registry import Registry


def test_every_read_returns_the_published_instant_as_aware_utc(tmp_path, any_url):
    reg = Registry.open(any_url, (tmp_path / "blobs").as_uri())
    reg.register_base(make_base(tmp_path / "base"), digest=DIGEST)
    v1 = reg.publish("t", make_adapter(tmp_path / "a1", seed=1), base_digest=DIGEST,
                     method="lora", aliases=["production"])
    v2 = reg.publish("t", make_adapter(tmp_path / "a2", seed=2), base_digest=DIGEST,
                     method="lora")
    published = {1: v1.created_at, 2: v2.created_at}
    assert all(t.tzinfo is timezone.utc for t in published.values())

    read = [reg.get("t", 1), reg.get("t", alias="production"), reg.get("t"),
            *reg.versions("t").items, *reg.search(method="lora").items]
    for v in read:
        assert v.created_at.tzinfo is timezone.utc
        assert v.created_at == published[v.version]
    for info in (reg.get_task("t"), *reg.list_tasks().items):
        assert info.created_at.tzinfo is timezone.utc and info.updated_at.tzinfo is timezone.utc
        assert (info.created_at, info.updated_at) == (published[1], published[2])
    (move,) = reg.alias_history("t")
    # Moved while the first version was recorded (its own clock reading on some paths).
    assert move.moved_at.tzinfo is timezone.utc
    assert published[1] <= move.moved_at <= published[2]
    reg.close()
