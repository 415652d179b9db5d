"""Thin Prefect task wrappers, one per pipeline stage, over ``peftops.stages``."""

from tasks.stages import (base_task, evaluate_task, measure_task, merge_task, prepare_task, publish_task,
                          train_task)

__all__ = ["base_task", "evaluate_task", "measure_task", "merge_task", "prepare_task", "publish_task", "train_task"]
