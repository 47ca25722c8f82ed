# Two entry points: `make demo` and `make test`. Both build .venv from nothing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_STAMP := $(VENV)/.installed-torch
DEMO_STAMP := $(VENV)/.installed-demo
TEST_STAMP := $(VENV)/.installed-test
REF := .venv-ref
REF_STAMP := $(REF)/.installed

.PHONY: demo test venv venv-ref clean bench

venv: $(TEST_STAMP)

# torch/torchvision are pinned and installed with plain pip first: pip takes these
# two from the machine's local wheel store; a resolver that ignored the local cap
# would download several GB of CUDA builds.
$(TORCH_STAMP):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	touch $@

# The demo needs the package and its built-in data only; the tests add the reference
# implementations (transformers, timm), onnxruntime, and the Keras backends (tf, jax extras).
$(DEMO_STAMP): pyproject.toml $(TORCH_STAMP)
	$(PY) -m pip install -q -e '.[data]'
	touch $@

$(TEST_STAMP): pyproject.toml $(TORCH_STAMP)
	$(PY) -m pip install -q -e '.[dev,tf,jax]'
	touch $@

# The reference TF DeiT classes (transformers 4.55.4, the last release with them, on Keras 2) for
# tests/keras/test_keras_reference.py: their own venv, on top of .venv's packages (a .pth file),
# since the other tests compare with the transformers that .venv has.
venv-ref: $(REF_STAMP)

$(REF_STAMP): $(TEST_STAMP)
	$(PYTHON) -m venv $(REF)
	$(REF)/bin/python -m pip install -q --no-deps transformers==4.55.4 tf-keras==2.21.0 'huggingface_hub<1.0' 'tokenizers>=0.21,<0.22'
	$(PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" > "$$($(REF)/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/zz_deit_venv.pth"
	touch $(REF_STAMP)

demo: $(DEMO_STAMP)
	$(VENV)/bin/deit demo --out runs/demo

# worksteal: an idle worker takes tests from the other's queue, so neither ends alone on a long
# file (with loadfile, one worker ran the last files by itself: 858 s against 772 s, same VM).
test: $(TEST_STAMP) $(REF_STAMP)
	$(PY) -m pytest tests -n 2 --dist worksteal --durations=20

bench: $(TEST_STAMP)
	$(PY) benchmarks/inference.py

clean:
	rm -rf $(VENV) $(REF) runs
