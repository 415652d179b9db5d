"""The training loop and what it runs on: batching, CPU kernels, memory controls."""
