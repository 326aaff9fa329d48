# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= runs/demo_cpc_audio

.PHONY: demo test test-fast install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[dev]'
	touch $(STAMP)

# Pretrain CPC on the embedded synthetic speech corpus and print its evaluation.
demo: $(STAMP)
	rm -rf $(DEMO_DIR)
	$(VENV)/bin/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
		--num_cpu_threads_per_process $$(nproc) \
		train.py --task cpc_audio --output-dir $(DEMO_DIR)

# Two pytest workers: much of the suite is process start-up, decoding and single-threaded
# bookkeeping, which a second worker overlaps on a 2-core machine.
test: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest -q -n 2 --dist worksteal tests --durations=15

# tests/unit and tests/integration without the tests marked slow: a few minutes, for edit-test loops.
test-fast: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest -q -n 2 --dist worksteal tests -m "not slow"

clean:
	rm -rf runs .pytest_cache
