"""Orchestration glue that never changes what a stage writes: cache keys, change detection, DVC metadata, the quality gate, MLflow tracking, the process environment."""
