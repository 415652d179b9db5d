"""One Prefect task per stage. The logic lives in ``peftops.pipeline``; these add retries
for I/O and names for the Prefect UI, nothing else."""

from __future__ import annotations

from prefect import task

from peftops import pipeline


@task(name="pin-base")
def base_task(params, home=None):
    """Build (once) and verify the pinned base snapshot."""
    return pipeline.stage_base(params, home)


@task(name="prepare-data")
def prepare_task(params, home=None):
    """Parse, subsample and tokenize the task's splits."""
    return pipeline.stage_prepare(params, home)


@task(name="train", task_run_name="train-{method_name}")
def train_task(params, method_name: str, home=None, progress: bool = True):
    """Train one method (no retries: a failed training run is not an I/O hiccup)."""
    return pipeline.stage_train(params, method_name, home, progress=progress)


@task(name="evaluate", task_run_name="evaluate-{label}")
def evaluate_task(params, method_name, home=None, label: str = "base"):
    """Score the base model or a trained adapter on the dev split."""
    return pipeline.stage_evaluate(params, method_name, home)


@task(name="merge", task_run_name="merge-{method_name}")
def merge_task(params, home=None, method_name: str = "lora", export_dir=None):
    """Merge an adapter into the base and certify parity."""
    return pipeline.stage_merge(params, home, method_name, export_dir)


@task(name="publish", retries=2, retry_delay_seconds=2)
def publish_task(params, home=None, method_name: str = "lora", metrics=None, lineage=None, tags=None,
                 aliases=()):
    """Publish an adapter to the registry (retried: it is storage I/O)."""
    return pipeline.stage_publish(params, home, method_name, metrics=metrics, lineage=lineage, tags=tags,
                                  aliases=aliases)
