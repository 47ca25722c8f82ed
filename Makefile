# Two entry points: `make demo` and `make test`. Both build .venv from nothing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test venv clean bench

venv: $(STAMP)

# torch/torchvision are pinned and installed with plain pip first: pip takes these
# two from the machine's local wheel store; a resolver that ignored the local cap
# would download several GB of CUDA builds.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev,tf,jax]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/deit demo --out runs/demo

test: $(STAMP)
	$(PY) -m pytest tests

bench: $(STAMP)
	$(PY) benchmarks/inference.py

clean:
	rm -rf $(VENV) runs
