"""Scoring a model: dev-set evaluation, metrics, forgetting, LoRA merge with a parity certificate."""
