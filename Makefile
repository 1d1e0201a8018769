# Two commands do everything on a fresh machine with Python 3.11: `make test` and `make demo`.
# The environment lives in .venv/ and is built once from requirements.lock (the runtime set) and
# requirements-dev.lock (tests, lint, protoc); the stamp files make a second run skip the install unless
# a lock or setup.py changed. The images run `make install-runtime`: the runtime lock alone.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RUNTIME_STAMP := $(VENV)/.installed-runtime
DEPS_STAMP := $(VENV)/.installed-deps
# The CUDA training image installs the same lock with mxnet swapped for mxnet-cu112 (same version); the GPU
# serving image swaps onnxruntime for onnxruntime-gpu (same version).
MXNET_PACKAGE ?= mxnet
ONNXRUNTIME_PACKAGE ?= onnxruntime
# Two cores: one OpenMP pool per process, sized to the machine, keeps MXNet from oversubscribing.
export OMP_NUM_THREADS ?= 2
export MXNET_ENGINE_TYPE ?= ThreadedEnginePerDevice
export PYTHONDONTWRITEBYTECODE = 1

.PHONY: install install-runtime install-deps test test-fast test-images images lint demo bench bench-peer peer-venv bench-nncf nncf-venv audit clean proto nginx

install: $(STAMP) nginx

install-runtime: $(RUNTIME_STAMP) nginx

install-deps: $(DEPS_STAMP)

# The scoring server runs nginx in front of gunicorn (serve/entry.py): Debian's package, as root.
nginx:
	@command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null; \
	  else \
	    echo "nginx is missing and this is not root; run: sudo apt-get install -y nginx"; exit 1; \
	  fi; }

# The locked packages alone (the images install them before copying the sources, see Dockerfile.serve).
$(DEPS_STAMP): requirements.lock
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	sed -e 's/^mxnet==/$(MXNET_PACKAGE)==/' -e 's/^onnxruntime==/$(ONNXRUNTIME_PACKAGE)==/' requirements.lock \
	  > $(VENV)/requirements.txt
	$(PY) -m pip install --disable-pip-version-check -q --no-deps -r $(VENV)/requirements.txt
	touch $(DEPS_STAMP)

$(RUNTIME_STAMP): $(DEPS_STAMP) setup.py
	$(PY) -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	$(MAKE) proto
	touch $(RUNTIME_STAMP)

$(STAMP): $(RUNTIME_STAMP) requirements-dev.lock
	$(PY) -m pip install --disable-pip-version-check -q --no-deps -r requirements-dev.lock
	$(PY) -m pip check
	touch $(STAMP)

# record_pb2.py from record.proto with the dev lock's grpcio-tools; where that is not installed (the images),
# with a throwaway copy of the same two pins, deleted again, so the runtime set stays what the lock says.
proto:
	@if [ -f gluonseg/codecs/record.proto ]; then \
	  if $(PY) -c 'import grpc_tools' 2>/dev/null; then \
	    $(PY) -m grpc_tools.protoc -Igluonseg/codecs --python_out=gluonseg/codecs gluonseg/codecs/record.proto; \
	  else \
	    tmp=$$(mktemp -d) && grep -E '^grpcio(-tools)?==' requirements-dev.lock > $$tmp/protoc.txt && \
	    $(PY) -m pip install --disable-pip-version-check -q --no-deps --target $$tmp/site -r $$tmp/protoc.txt && \
	    PYTHONPATH=$$tmp/site $(PY) -m grpc_tools.protoc -Igluonseg/codecs --python_out=gluonseg/codecs \
	      gluonseg/codecs/record.proto; status=$$?; rm -rf $$tmp; exit $$status; \
	  fi; fi

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The Python suite, then the images built and run as SageMaker runs them (tests/containers, a Docker engine).
test: install proto lint images
	$(PY) -m pytest -q --durations=20 tests

test-fast: install proto lint
	$(PY) -m pytest -q tests/unit

# Both CPU images (Dockerfile.train VARIANT=cpu, Dockerfile.serve), on a Docker engine that tools.images
# installs and starts when there is none (root), over a stand-in base when Docker Hub cannot be reached.
images: install
	$(PY) -m tools.images build

test-images: images
	$(PY) -m pytest -q tests/containers

demo: install proto
	$(PY) -m gluonseg.demo --out demo-output

bench: install proto
	$(PY) -m benchmarks.run_all

# PyTorch beside gluonseg on this CPU (benchmarks/pytorch_peer.py): torch needs an environment of its own
# (gluoncv fails to import beside torch 2); about 5.5 GB, so never part of `make test`.
PEER_VENV := .venv-peer
peer-venv: $(PEER_VENV)/.installed

$(PEER_VENV)/.installed: benchmarks/peer/requirements.lock
	test -x $(PEER_VENV)/bin/python || $(PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/python -m pip install --disable-pip-version-check -q --no-deps -r benchmarks/peer/requirements.lock
	touch $@

bench-peer: install proto peer-venv
	$(PY) -m benchmarks.pytorch_peer

# NNCF beside the INT8 step's own route (benchmarks/nncf_route.py), on make demo's job: .venv-nncf sees .venv's
# packages through a .pth file and adds NNCF 2.14.1's (benchmarks/nncf/requirements.lock); never in make test.
NNCF_VENV := .venv-nncf
nncf-venv: $(NNCF_VENV)/.installed

$(NNCF_VENV)/.installed: benchmarks/nncf/requirements.lock $(STAMP)
	test -x $(NNCF_VENV)/bin/python || $(PYTHON) -m venv $(NNCF_VENV)
	echo "import site; site.addsitedir('$$($(PY) -c 'import sysconfig; print(sysconfig.get_path("purelib"))')')" \
	  > "$$($(NNCF_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/gluonseg-venv.pth"
	$(NNCF_VENV)/bin/python -m pip install --disable-pip-version-check -q --no-deps -r benchmarks/nncf/requirements.lock
	$(NNCF_VENV)/bin/python -m pip check
	touch $@

bench-nncf: install proto nncf-venv
	test -d demo-output/model || $(MAKE) demo
	$(NNCF_VENV)/bin/python -m benchmarks.nncf_route --model demo-output/model --data demo-output/data

# Offline audit of both locks against security/pypa-advisories.json (SECURITY.md); add
# ARGS=--online on a machine that reaches PyPI, with pip-audit on the PATH.
audit: install
	$(PY) -m tools.dependency_audit $(ARGS)

clean:
	rm -rf $(VENV) $(PEER_VENV) $(NNCF_VENV) demo-output .pytest_cache .ruff_cache
