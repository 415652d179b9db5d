# prefect deploy --all  /  peftops serve   (prefect.yaml's entrypoints)
"""The deployed entrypoints: the fleet flows with only the parameters a user sets, typed.

Prefect builds a deployment's "Run" form from its entrypoint's signature. The flows in
``flows/fleet.py`` also take what the CLI, the tests and the benchmarks pass in-process (a
``PipelineParams`` object, the report ``note``, the progress bars, the state home, a fleet config,
MLflow run tags), none of which a person can type into a form. These wrappers keep the same flow
names, so the deployments and their runs stay where they were, and expose only the user's
parameters: methods as a multi-select of the registered methods, ``max_concurrency`` bounded,
``runner`` a choice, each described from the docstring's ``Args``. Each body calls the wrapped
flow's function (``.fn``), so a deployment run is one flow run, not a flow wrapping a subflow.

The state home is ``$PEFTOPS_HOME`` (``state_home(None)``; prefect.yaml's job variables set it)
and progress bars are off: a deployment's output goes to its logs.
"""

from typing import Annotated, Any, Literal

from prefect import flow
from pydantic import Field

from flows import fleet as internal
from peftops.methods import available_methods

# The registry's names, so a newly registered method shows up in the form without an edit here.
MethodName = Literal[tuple(available_methods())]  # type: ignore[valid-type]
Runner = Literal["local", "ray"]
Concurrency = Annotated[int, Field(ge=1, le=64)]


# The defaults are literals (``methods=["lora"]`` is never mutated: the bodies pass a tuple) so
# that Prefect's reading of the source, its fallback when the module cannot be imported, shows
# the same form.
@flow(name="fleet")
def fleet(tasks: list[str] | None = None, methods: list[MethodName] = ["lora"],
          params_file: str = "params.yaml", max_concurrency: Concurrency = 2,
          runner: Runner | None = None, address: str | None = None) -> dict[str, Any]:
    """Run the pipeline of each task with each method; unchanged tasks are cache hits. The run
    fails at the end, naming them, if any task failed; ``<home>/fleet-report.json`` lists every task.

    Args:
        tasks: Task names from the manifest; empty runs every task.
        methods: PEFT methods to train and evaluate for each task.
        params_file: The parameters file, relative to the repository root.
        max_concurrency: Tasks run at a time by the local runner.
        runner: Where the tasks run: threads of this process (local) or Ray workers (ray); empty uses the parameters file's fleet.runner.
        address: Ray cluster address (host:port, ray://host:port or auto); empty uses the parameters file's fleet.address.
    """
    return internal.fleet.fn(tasks=tasks, methods=tuple(methods), params_file=params_file,
                             max_concurrency=max_concurrency, runner=runner, address=address)


@flow(name="adapter-pipeline", flow_run_name="pipeline-{task}")
def adapter_pipeline(task: str | None = None, methods: list[MethodName] = ["lora"],
                     params_file: str = "params.yaml", cache: bool = True) -> dict[str, Any]:
    """One task's pipeline: prepare, train, evaluate, merge (LoRA) and publish each method,
    tracked in MLflow; unchanged stages are cache hits.

    Args:
        task: The task name from the manifest; empty uses the parameters file's data.task.
        methods: PEFT methods to train and evaluate.
        params_file: The parameters file, relative to the repository root.
        cache: Reuse unchanged stages; off re-runs every stage.
    """
    return internal.adapter_pipeline.fn(task=task, methods=tuple(methods), params_file=params_file,
                                        cache=cache)


@flow(name="retrain")
def retrain(since: str, methods: list[MethodName] = ["lora"], params_file: str = "params.yaml",
            max_concurrency: Concurrency = 2, data_dir: str | None = None, dry_run: bool = False,
            runner: Runner | None = None, address: str | None = None) -> dict[str, Any]:
    """Retrain, as one fleet, exactly the tasks whose data, manifest entry, parameters or code
    changed since a git revision of the repository the deployment runs in.

    Args:
        since: The git revision to compare with (a commit, tag or HEAD~1).
        methods: PEFT methods to train and evaluate for each affected task.
        params_file: The parameters file, relative to the repository root.
        max_concurrency: Tasks run at a time by the local runner.
        data_dir: Data root for finding changes and for training; empty uses the parameters file's data.data_root.
        dry_run: Only list the affected tasks and why, in the report; train nothing.
        runner: Where the tasks run: threads of this process (local) or Ray workers (ray); empty uses the parameters file's fleet.runner.
        address: Ray cluster address (host:port, ray://host:port or auto); empty uses the parameters file's fleet.address.
    """
    # repo "." is the deployment's working directory: the checkout prefect.yaml's pull step enters
    return internal.retrain.fn(since=since, repo=".", methods=tuple(methods), params_file=params_file,
                               max_concurrency=max_concurrency, data_dir=data_dir, dry_run=dry_run,
                               runner=runner, address=address)
