# gpupool — the two commands that matter on a fresh machine:
#   make demo   the whole loop: local control plane, operator, pool, traffic, telemetry-driven scaling
#   make test   every test (unit, real libtorch, real API server, end to end)
# Both run `make setup` first, which is idempotent and cached under $(GPUPOOL_CACHE).

SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
GPUPOOL_CACHE ?= $(HOME)/.cache/gpupool
export GPUPOOL_CACHE
ENV := source tests/setup/env.sh &&

.PHONY: setup setup-torch setup-control-plane build release test test-rust lint fmt crds check-params demo bench-gpu bench-report clean-cache

setup: setup-torch setup-control-plane

setup-torch:
	@bash tests/setup/torch-venv.sh

setup-control-plane:
	@bash tests/controlplane/control-plane.sh build

build: setup-torch
	$(ENV) cargo build --workspace --all-targets

release: setup-torch
	$(ENV) cargo build --release -p gpupool-sidecar -p gpupool-operator

fmt:
	cargo fmt --all

lint: setup-torch
	cargo fmt --all -- --check
	$(ENV) cargo clippy --workspace --all-targets -- -D warnings

crds:
	$(ENV) cargo run -q -p gpupool-api --bin crdgen > crds/inferencepool.yaml
	cp crds/inferencepool.yaml charts/gpupool/crds/inferencepool.yaml

check-params: setup-torch
	$(ENV) python tests/models/check_params.py

test-rust: setup
	$(ENV) cargo test --workspace --no-fail-fast

test: setup lint check-params test-rust

demo: setup
	$(ENV) bash examples/demo.sh

bench-gpu:
	@echo "GPU benchmarks run on the lent H200: see bench/README.md"

# Tables and the scaling plot of a GPU session's results (RESULTS=docs/results/<session>);
# matplotlib lives in its own small virtual environment, cached like the rest.
RESULTS ?= docs/results/h200-2026-11-28b
bench-report:
	@[[ -x $(GPUPOOL_CACHE)/plot-venv/bin/python ]] || { python3 -m venv $(GPUPOOL_CACHE)/plot-venv && \
		$(GPUPOOL_CACHE)/plot-venv/bin/pip install -q 'matplotlib>=3.8,<4'; }
	$(GPUPOOL_CACHE)/plot-venv/bin/python bench/report.py $(RESULTS)
	$(GPUPOOL_CACHE)/plot-venv/bin/python bench/plot.py $(RESULTS) $(RESULTS)/scaling.png

clean-cache:
	rm -rf $(GPUPOOL_CACHE)
