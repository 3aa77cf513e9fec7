# The common commands. `make demo` and `make test` set everything up on a fresh clone first.
VENV ?= .venv
PY := $(VENV)/bin/python
export PYTHONUNBUFFERED := 1

.PHONY: setup demo test test-slow lint bench clean

setup: $(VENV)/.installed

# CPU torch first: with torch==2.13.0 (a CPU wheel on disk here) installed, the project's torch>=2.4
# is satisfied and pip pulls no CUDA packages. A machine with its own torch keeps it.
$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# The benchmark and its scoring checks (seconds), then the main job: SFT warm-start + GRPO on a local Ray +
# held-out evaluation of the tiny model (minutes), into a fresh run folder each time.
demo: setup
	$(VENV)/bin/rlad demo --config configs/demo.yaml
	$(VENV)/bin/rlad train configs/demo.yaml train.run_dir=runs/demo/$$(date +%Y%m%d-%H%M%S)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest -q

# Tests marked slow (minutes each): the demo run (SFT + GRPO) must learn the task.
test-slow: setup
	$(PY) -m pytest -q -m slow

bench: setup
	$(PY) experiments/bench_rewards.py
	$(PY) experiments/bench_synth.py
	$(PY) experiments/bench_tiny_policy.py

clean:
	rm -rf $(VENV) runs out .pytest_cache .hypothesis
