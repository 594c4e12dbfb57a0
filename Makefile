# codetr — the two set-up commands of the README: `make run` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV_PY := $(CURDIR)/.venv/bin/python
MODEL   ?= models/codino-tiny-synth
# Tests that compare with Python references (pycocotools, onnxruntime) find it here.
export CODETR_PYTHON := $(VENV_PY)

.PHONY: help run test fmt lint nextest venv ort bench-eval

help:
	@echo "make run    install ONNX Runtime (PyPI wheel, into .ort/), build and serve $(MODEL)"
	@echo "make test   the whole suite: fmt check, clippy -D warnings (incl. the vulkan GPU build), nextest (incl. Python reference checks)"
	@echo "make bench-eval   COCO evaluator vs pycocotools speed (bench/eval_speed.sh)"

venv:
	@scripts/setup-python.sh

ort:
	@scripts/install-ort.sh cpu >/dev/null

run: ort
	@if [ ! -f "$(MODEL)" ] && [ ! -f "$(MODEL)/model.onnx" ]; then \
	  echo "make run: $(MODEL) holds no model.onnx."; \
	  echo "          Serve any exported graph: make run MODEL=path/to/model.onnx"; \
	  echo "          e.g. the tests' random-weight graph: make run MODEL=server/tests/fixtures/micro.onnx"; \
	  exit 1; \
	fi
	cargo build --release -p codetr-serve
	ORT_DYLIB_PATH=$(CURDIR)/.ort/cpu/libonnxruntime.so ./target/release/codetr-serve --model $(MODEL)

fmt:
	cargo fmt --all -- --check

# With the trainer's `vulkan` feature: the GPU build (Burn's wgpu/Vulkan backend, no GPU or
# SDK needed to compile) is checked on every run; nextest builds and runs the CPU build.
lint:
	cargo clippy --workspace --all-targets --features codetr-train/vulkan -- -D warnings

nextest: venv
	cargo nextest run --workspace --no-fail-fast

test: fmt lint nextest

bench-eval: venv
	bench/eval_speed.sh
