# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip
STAMP   = $(VENV)/.stars-guard-installed

.PHONY: setup venv browser models engines demo test unit matrix integration bench lint clean

setup: $(STAMP) models

venv: $(STAMP)

# torch comes first and alone, with pip, so the CPU build on local disk is used
# (a dependency resolver asking for plain "torch" would fetch a multi-GB CUDA build).
# llama-cpp-python is built portable (AVX2, not -march=native: ggml's AMX kernels crashed on a CPU
# that has AMX), without pip's wheel cache, which would hand back a native build made earlier.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "torch==2.13.0"
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(PIP) install --quiet --no-cache-dir "llama-cpp-python[server]==0.3.36"
	$(PIP) install --quiet -e ".[local,langchain,agents,telemetry,http,server,llamacpp,examples,bench,training,dev]"
	touch $(STAMP)

# Headless Chromium (Debian package) renders the dashboard in its test; installed once, as root.
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

models: $(STAMP)
	$(VENV)/bin/stars-guard models pull
	$(PY) -m stars_guard.bench.redteam pull

# The real serving engines the tests run against: llama.cpp's llama-server (built once from the
# llama.cpp source in the llama-cpp-python sdist, several minutes) and vLLM's CPU build (its own
# virtual env, about 3 minutes, 3.5 GB). Cached in the model cache; a second run does nothing.
engines: $(STAMP)
	$(PY) -m stars_guard.engines provision

demo: setup
	$(VENV)/bin/stars-guard chat "How do I keep my houseplants alive while I am on holiday?" --seed 7 --max-new-tokens 96

# One thread per process: the tests run servers beside the models on 2 cores, and oversubscribed
# torch threads were measured up to 10x slower there than one thread each.
# Then the interpreter matrix: the tests that need no torch on Python 3.12 and 3.13 (noxfile.py).
test: setup browser engines
	OMP_NUM_THREADS=1 $(PY) -m pytest tests -q --durations=15
	$(MAKE) matrix

# The torch-free tests on every other supported Python found here (pyenv's included), each in its own
# env in the user's cache (kept between runs and clones); a missing interpreter is reported and skipped.
NOX_ENVS ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/stars-guard/nox
matrix: $(STAMP)
	$(VENV)/bin/nox --no-color --envdir "$(NOX_ENVS)"

# Without the model cache or any real server: tests/conftest.py marks every test that needs one
# `integration` (by the fixtures it uses), so this runs on a machine that never ran `models pull`.
unit: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest tests -q -m "not integration"

integration: setup browser engines
	OMP_NUM_THREADS=1 $(PY) -m pytest tests -q -m integration --durations=15

bench: setup engines
	$(PY) benchmarks/engine_bench.py --out benchmarks/results
	OMP_NUM_THREADS=1 $(PY) benchmarks/backends_bench.py
	$(PY) benchmarks/serve_bench.py --out benchmarks/results
	$(PY) benchmarks/engines_bench.py --out benchmarks/results
	$(PY) benchmarks/serve_bench.py --engine vllm --out benchmarks/results
	$(PY) benchmarks/constrained_bench.py --out benchmarks/results
	OMP_NUM_THREADS=2 $(PY) benchmarks/adaptive_bench.py --backends local,vllm --variants stars,stars-adaptive,stars-aligned,stars-adaptive-aligned --out benchmarks/results/adaptive
	for backend in local llama-server vllm; do \
	  out=benchmarks/results/adaptive-benign$$( [ $$backend = local ] || echo -$${backend%%-*} ); \
	  $(PY) benchmarks/adaptive_bench.py --backends $$backend --variants stars,stars-adaptive,stars-adaptive-q0.33 --prompt-set benign --prompts 12 --out $$out || exit 1; \
	done

# ruff, then tests/test_layers.py as a script: the import contracts between the layers, and every
# imported package named in its extra (the same checks run under `make test` and `make unit`).
lint: $(STAMP)
	$(VENV)/bin/ruff check stars_guard adapters training tests benchmarks examples noxfile.py
	$(VENV)/bin/ruff format --check stars_guard adapters training tests benchmarks examples noxfile.py
	$(PY) tests/test_layers.py

clean:
	rm -rf $(VENV) .nox build *.egg-info .pytest_cache
