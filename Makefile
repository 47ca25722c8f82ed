# Two entry points: `make demo` and `make test`. Both build .venv from nothing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
REF := .venv-ref
REF_STAMP := $(REF)/.installed

.PHONY: demo test venv venv-ref clean bench

venv: $(STAMP)

# torch/torchvision are pinned and installed with plain pip first: pip takes these
# two from the machine's local wheel store; a resolver that ignored the local cap
# would download several GB of CUDA builds. The tf and jax extras: the Keras models
# (deit.keras) and their tests on both backends.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev,tf,jax]'
	touch $(STAMP)

# The reference TF DeiT classes (transformers 4.55.4, the last release with them, on Keras 2) for
# tests/keras/test_keras_reference.py: their own venv, on top of .venv's packages (a .pth file),
# since the other tests compare with the transformers that .venv has.
venv-ref: $(REF_STAMP)

$(REF_STAMP): $(STAMP)
	$(PYTHON) -m venv $(REF)
	$(REF)/bin/python -m pip install -q --no-deps transformers==4.55.4 tf-keras==2.21.0 'huggingface_hub<1.0' 'tokenizers>=0.21,<0.22'
	$(PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" > "$$($(REF)/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/zz_deit_venv.pth"
	touch $(REF_STAMP)

demo: $(STAMP)
	$(VENV)/bin/deit demo --out runs/demo

test: $(STAMP) $(REF_STAMP)
	$(PY) -m pytest tests

bench: $(STAMP)
	$(PY) benchmarks/inference.py

clean:
	rm -rf $(VENV) $(REF) runs
