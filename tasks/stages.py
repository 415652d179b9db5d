"""One Prefect task per stage. The logic lives in ``peftops.stages``; these add retries
for I/O, names for the Prefect UI and input-keyed caching, nothing else.

Caching: a caller that passes ``cache_key`` (computed by ``peftops.pipeline.caching.stage_key``) makes
that key the Prefect cache key, so an unchanged stage is a cache hit across flow runs and
processes when results are persisted (``flows.stagecalls`` sets that up); after running, the
stage records its key beside its outputs. Without ``cache_key`` nothing is cached.

Stages that load a model (train, evaluate, merge) run one at a time within a process: building
a transformers model is not thread-safe (two concurrent loads fail with "Cannot copy out of meta
tensor"), and on CPU one training already uses every core. Concurrent fleet tasks still overlap
everything else (prepare, publish, tracking); parallel training means more worker processes.
"""

from __future__ import annotations

import threading

from prefect import task
from prefect.cache_policies import NO_CACHE

from peftops import stages as pipeline
from peftops.pipeline import caching


# Process-wide: the model-loading stages of every flow in this process take turns (see above).
_MODEL_STAGE = threading.Lock()


def _input_key(ctx, inputs) -> str | None:
    """The explicit input key, or None (no caching) when the caller gave none."""
    return inputs.get("cache_key")


def _record(params, home, stage: str, method: str | None, cache_key: str | None) -> None:
    if cache_key:
        d = caching.stage_dir(pipeline.Layout.of(home).home, stage, params.data.task, method)
        caching.record_key(d, stage, cache_key)


@task(name="pin-base")
def base_task(params, home=None):
    """Build (once) and verify the pinned base snapshot."""
    return pipeline.stage_base(params, home)


@task(name="prepare-data", cache_key_fn=_input_key)
def prepare_task(params, home=None, cache_key: str | None = None):
    """Parse, subsample and tokenize the task's splits."""
    out = pipeline.stage_prepare(params, home)
    _record(params, home, "prepare", None, cache_key)
    return out


@task(name="train", task_run_name="train-{method_name}", cache_key_fn=_input_key)
def train_task(params, method_name: str, home=None, progress: bool = True, cache_key: str | None = None,
               on_step=None):
    """Train one method (no retries: a failed training run is not an I/O hiccup); ``on_step`` sees
    every step (the flow logs them to MLflow while the training runs)."""
    with _MODEL_STAGE:
        out = pipeline.stage_train(params, method_name, home, progress=progress, on_step=on_step)
    _record(params, home, "train", method_name, cache_key)
    return out


@task(name="evaluate", task_run_name="evaluate-{label}", cache_key_fn=_input_key)
def evaluate_task(params, method_name, home=None, label: str = "base", cache_key: str | None = None):
    """Score the base model or a trained adapter on the dev split."""
    with _MODEL_STAGE:
        out = pipeline.stage_evaluate(params, method_name, home)
    _record(params, home, "evaluate", method_name, cache_key)
    return out


@task(name="merge", task_run_name="merge-{method_name}", cache_key_fn=_input_key)
def merge_task(params, home=None, method_name: str = "lora", export_dir=None, cache_key: str | None = None):
    """Merge an adapter into the base and certify parity."""
    with _MODEL_STAGE:
        out = pipeline.stage_merge(params, home, method_name, export_dir)
    _record(params, home, "merge", method_name, cache_key)
    return out


@task(name="measure", task_run_name="measure-{label}", cache_key_fn=_input_key)
def measure_task(params, method_name, cfg, home=None, label: str = "base", cache_key: str | None = None):
    """Latency per example and the loss on general text (forgetting) of the base or an adapter."""
    with _MODEL_STAGE:
        out = pipeline.stage_measure(params, method_name, cfg, home)
    _record(params, home, "measure", method_name, cache_key)
    return out


@task(name="publish", task_run_name="publish-{method_name}", retries=2, retry_delay_seconds=2,
      cache_policy=NO_CACHE)
def publish_task(params, home=None, method_name: str = "lora", **kwargs):
    """Publish an adapter through the quality gate (``peftops.pipeline.gate.publish_gated``; retried: it is
    storage I/O, and publishing the same content again returns the same version)."""
    from peftops.pipeline.gate import publish_gated

    return publish_gated(params, home, method_name, **kwargs)
