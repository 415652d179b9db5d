"""The deployments' Run forms: prefect.yaml's entrypoints take only the user's parameters, typed
and described, and the declared parameters are valid for them (by Prefect's own validation)."""

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

USER_PARAMETERS = {
    "fleet": {"tasks", "methods", "params_file", "max_concurrency", "runner", "address"},
    "adapter-pipeline": {"task", "methods", "params_file", "cache"},
    "retrain": {"since", "methods", "params_file", "max_concurrency", "data_dir", "dry_run", "runner", "address"},
}
INTERNALS = {"params", "note", "progress", "home", "fleet_cfg", "run_tags", "repo"}
NAMES = [d["name"] for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]]


def _enum(prop: dict) -> list:
    """The enum of a property that may also be null (``anyOf: [{enum}, {null}]``)."""
    if "enum" in prop:
        return prop["enum"]
    return next(p["enum"] for p in prop["anyOf"] if "enum" in p)


@pytest.mark.parametrize("name", NAMES)
def test_the_form_shows_only_the_users_parameters_typed_and_described(name):
    from prefect.utilities.schema_tools import validate

    from flows.serve import load_deployments, load_flow, to_deployments
    from peftops.methods import available_methods

    [spec] = load_deployments(REPO / "prefect.yaml", [name])
    [deployment] = to_deployments([spec])  # what `peftops serve` registers

    assert spec["entrypoint"].startswith("flows/deployments.py:")
    schema = deployment._parameter_openapi_schema.model_dump_for_openapi()
    props = schema["properties"]
    assert set(props) == USER_PARAMETERS[deployment.flow_name]
    assert not set(props) & INTERNALS
    assert props["methods"]["type"] == "array"
    assert props["methods"]["items"]["enum"] == available_methods()
    assert props["methods"]["default"] == ["lora"]
    if "max_concurrency" in props:
        assert props["max_concurrency"]["type"] == "integer"
        assert props["max_concurrency"]["minimum"] == 1
    if "runner" in props:
        assert _enum(props["runner"]) == ["local", "ray"]
    assert all(p.get("description") for p in props.values()), [n for n, p in props.items() if not p.get("description")]
    # prefect.yaml's parameters pass the validation the server applies to a run's parameters (the
    # JSON schema) and the one the flow applies when it starts (its signature's types)
    given = spec.get("parameters") or {}
    assert [e.message for e in validate(given, schema)] == []
    assert validate({**given, "methods": ["nope"]}, schema)  # the check is not vacuous
    load_flow(spec["entrypoint"]).validate_parameters(given)


def test_the_deployed_flows_keep_their_names():
    from flows import deployments, fleet

    for user, internal in [(deployments.fleet, fleet.fleet), (deployments.adapter_pipeline, fleet.adapter_pipeline),
                           (deployments.retrain, fleet.retrain)]:
        assert user.name == internal.name


def test_a_method_that_is_not_registered_is_refused_naming_the_field():
    from prefect.exceptions import ParameterTypeError

    from flows.deployments import fleet

    assert fleet.validate_parameters({"methods": ["lora", "full"]})["methods"] == ["lora", "full"]
    with pytest.raises(ParameterTypeError, match="methods") as err:
        fleet.validate_parameters({"methods": ["nope"]})
    assert "lora" in str(err.value)  # the message lists the valid choices
    with pytest.raises(ParameterTypeError, match="max_concurrency"):
        fleet.validate_parameters({"max_concurrency": 0})


def test_a_deployment_run_is_one_flow_run_of_the_internal_body(prefect_harness, monkeypatch, tmp_path):
    import flows.fleet
    from prefect.context import FlowRunContext

    from flows.deployments import adapter_pipeline

    seen = {}

    def fake_run_pipeline(params, home, opts):
        ctx = FlowRunContext.get()
        seen.update(flow=ctx.flow.name, parent=ctx.flow_run.parent_task_run_id, task=params.data.task,
                    home=home, methods=opts.methods, progress=opts.progress, refresh=opts.refresh)
        return {"ok": True}

    monkeypatch.setattr(flows.fleet, "run_pipeline", fake_run_pipeline)
    assert adapter_pipeline(task="sst2", methods=["lora", "full"], params_file=str(REPO / "params.yaml"),
                            cache=False) == {"ok": True}
    # not a subflow; home left to $PEFTOPS_HOME (state_home(None)); no progress bars in a worker's log
    assert seen == {"flow": "adapter-pipeline", "parent": None, "task": "sst2", "home": None,
                    "methods": ("lora", "full"), "progress": False, "refresh": True}
