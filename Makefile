# Two commands do everything on a fresh machine with Python 3.11: `make test` and `make demo`.
# The environment lives in .venv/ and is built once from requirements.lock; the stamp file makes a
# second run skip the install unless the lock or setup.py changed.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The CUDA training image installs the same lock with mxnet swapped for mxnet-cu112 (same version); the GPU
# serving image swaps onnxruntime for onnxruntime-gpu (same version).
MXNET_PACKAGE ?= mxnet
ONNXRUNTIME_PACKAGE ?= onnxruntime
# Two cores: one OpenMP pool per process, sized to the machine, keeps MXNet from oversubscribing.
export OMP_NUM_THREADS ?= 2
export MXNET_ENGINE_TYPE ?= ThreadedEnginePerDevice
export PYTHONDONTWRITEBYTECODE = 1

.PHONY: install test test-fast lint demo bench audit clean proto nginx

install: $(STAMP) nginx

# The scoring server runs nginx in front of gunicorn (serve/entry.py): Debian's package, as root.
nginx:
	@command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null; \
	  else \
	    echo "nginx is missing and this is not root; run: sudo apt-get install -y nginx"; exit 1; \
	  fi; }

$(STAMP): requirements.lock setup.py
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	sed -e 's/^mxnet==/$(MXNET_PACKAGE)==/' -e 's/^onnxruntime==/$(ONNXRUNTIME_PACKAGE)==/' requirements.lock \
	  > $(VENV)/requirements.txt
	$(PY) -m pip install --disable-pip-version-check -q --no-deps -r $(VENV)/requirements.txt
	$(PY) -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	$(MAKE) proto
	touch $(STAMP)

proto:
	@if [ -f gluonseg/codecs/record.proto ]; then \
	  $(PY) -m grpc_tools.protoc -Igluonseg/codecs --python_out=gluonseg/codecs gluonseg/codecs/record.proto; fi

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: install proto lint
	$(PY) -m pytest -q tests

test-fast: install proto lint
	$(PY) -m pytest -q tests/unit

demo: install proto
	$(PY) -m gluonseg.demo --out demo-output

bench: install proto
	$(PY) -m benchmarks.run_all

# Offline audit of requirements.lock against security/pypa-advisories.json (SECURITY.md); add
# ARGS=--online on a machine that reaches PyPI, with pip-audit on the PATH.
audit: install
	$(PY) -m tools.dependency_audit $(ARGS)

clean:
	rm -rf $(VENV) demo-output .pytest_cache .ruff_cache
