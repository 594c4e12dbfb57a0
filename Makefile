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
	@echo "make test   the whole suite: fmt check, clippy -D warnings (incl. the vulkan GPU build), nextest (incl. Python reference checks and the wgpu backend on lavapipe)"
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

# The default build, then with the trainer's `vulkan` and `wgpu` features: the GPU builds
# (Burn's wgpu backend with SPIR-V or WGSL kernels, no GPU or SDK needed to compile) and the
# tests gated on them are checked on every run; nextest builds and runs the `wgpu` build.
lint:
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy --workspace --all-targets --features codetr-train/vulkan,codetr-train/wgpu -- -D warnings

# Built with the trainer's `wgpu` feature (Flex stays every test's device): the tests marked
# for it also run the model, MSDA and a training step on Burn's wgpu device, on Mesa's
# lavapipe where there is no GPU (they skip without it unless CODETR_WGPU_REQUIRED is set).
nextest: venv
	cargo nextest run --workspace --no-fail-fast --features codetr-train/wgpu

test: fmt lint nextest

bench-eval: venv
	bench/eval_speed.sh
