"""Property-based testing of the HTTP API from its own OpenAPI schema (schemathesis).

Every operation, with both tokens, must never answer 5xx and every response must match the
published schema (status code, content type, body, headers). Bounded here (a few examples
per operation); a long run is the same test with more examples:

    PEFTOPS_FUZZ_EXAMPLES=500 python -m pytest -q -p no:cacheprovider tests/registry/test_registry_fuzz.py
"""

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from regtestlib import DIGEST, make_adapter, make_base

from registry import Registry
from registry.api import create_app

EXAMPLES = int(os.environ.get("PEFTOPS_FUZZ_EXAMPLES", "12"))
AUTH = {"Authorization": "Bearer w-secret"}
# Schema-valid values the registry still refuses by its own rules (a name's characters, a
# digest's form) are answered 422 with the reason; that is not a server error or a schema
# violation, so the check that every schema-valid request succeeds is left out.
EXCLUDED = [schemathesis.checks.positive_data_acceptance]


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    reg = Registry.open(f"sqlite:///{tmp / 'r.db'}", (tmp / "blobs").as_uri())
    reg.register_base(make_base(tmp / "base"), digest=DIGEST, name="tiny")
    for i in range(2):  # something for the reads to find
        reg.publish("t", make_adapter(tmp / f"a{i}", seed=i), base_digest=DIGEST,
                    method="lora", aliases=["production"], tags={"team": "nlp"},
                    metrics={"accuracy": 0.9})
    app = create_app(reg, "w-secret", "r-secret", auth_failures_per_minute=1_000_000)
    yield schemathesis.openapi.from_asgi("/openapi.json", app, headers=AUTH)
    reg.close()


def test_api_conforms_to_its_schema(api_schema):
    # Driven through hypothesis directly (schemathesis' pytest plugin does not load under
    # this pytest), one operation after the other; failures are collected, then reported.
    failures = []
    calls = [0]
    operations = [r.ok() for r in api_schema.get_all_operations()]
    assert len(operations) >= 15
    for op in operations:
        @given(case=op.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case):
            calls[0] += 1
            case.call_and_validate(headers=AUTH, excluded_checks=EXCLUDED)

        try:
            check()
        except Exception as e:  # noqa: BLE001 - reported below, per operation
            failures.append(f"{op.label}: {str(e)[:1500]}")
    print(f"\nschemathesis: {len(operations)} operations, {calls[0]} requests, {len(failures)} failing operations")
    assert not failures, "\n\n".join(failures)
