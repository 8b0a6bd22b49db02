# Two commands for a new user: `make demo` and `make test`. Both set up .venv first.
# `make setup CUDA=1 VLLM=1`: vLLM for generation (requirements-vllm.txt: Python 3.13, its CUDA 13.0 torch).
ifdef VLLM
ifndef CUDA
$(error VLLM=1 needs CUDA=1: vLLM runs on NVIDIA GPUs only (make setup CUDA=1 VLLM=1))
endif
PYTHON ?= $(shell command -v python3.13)
endif
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
# `make setup CUDA=1`: the CUDA build of torch (requirements-cuda.txt); FLASH=1 adds flash-attn.
REQUIREMENTS := $(if $(VLLM),requirements-vllm.txt,$(if $(CUDA),requirements-cuda.txt,requirements.txt))
STAMP := $(VENV)/.installed$(if $(CUDA),-cuda)$(if $(FLASH),-flash)$(if $(VLLM),-vllm)
FLASH_ATTN := flash-attn==2.8.3.post2
# Snakemake runs steps as `python -m workflow_scripts...`: the venv must come first on PATH.
RUN := PATH="$(BIN):$$PATH"
CORES ?= all

.PHONY: setup demo demo-generated report docs test test-fast dry-run clean

setup: $(STAMP)

$(STAMP): requirements.txt requirements-cuda.txt requirements-vllm.txt requirements-nodeps.txt
	@test -n "$(PYTHON)" || { echo "make setup: no Python found$(if $(VLLM), (VLLM=1 needs python3.13 on PATH, or PYTHON=/path/to/python3.13))"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r $(REQUIREMENTS)
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-nodeps.txt
	$(if $(FLASH),$(BIN)/python -m pip install --quiet --no-build-isolation $(FLASH_ATTN))
	touch $(STAMP)

# The demo's steps are forked from a Python that imported torch, transformers and peft once (docs/performance.md,
# "Warm start"; outputs byte for byte a cold run's); its servers are stopped at the end. WARM=0 runs every step cold.
WARM ?= 1
WARM_DIR ?= /tmp/oofline-warm-$(shell id -u)
WARM_RUN := $(if $(filter 1,$(WARM)),export PATH="$(BIN):$$PATH" && eval "$$($(BIN)/python workflow_scripts/execution/warm_start.py env $(WARM_DIR))" &&,$(RUN))

demo: setup
	$(WARM_RUN) snakemake --cores $(CORES)
	$(WARM_RUN) snakemake --cores $(CORES) --configfile demo/debates.yaml
	$(RUN) snakemake --report results/report.html
	$(RUN) snakemake --report results/debates/report.html --configfile demo/debates.yaml
	$(if $(filter 1,$(WARM)),$(BIN)/python workflow_scripts/execution/warm_start.py stop $(WARM_DIR))

# Generation with SmolLM2 on the CPU takes about 10 minutes: a second demo target.
demo-generated: setup
	$(RUN) snakemake --cores $(CORES) --configfile demo/generated.yaml

report: setup
	$(RUN) snakemake --report results/report.html

# The generated parts of README.md and docs/ (config reference, rule graphs, reruns table): docs/generate.py.
# tests/test_docs.py fails when they differ from what this writes.
docs: setup
	$(RUN) python docs/generate.py

# most slow tests run `snakemake --cores 1` jobs; two workers (one test file each at a time, so a file's shared
# fixture is built once) keep both cores busy
TEST_WORKERS ?= 2
test: setup
	$(RUN) python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=40

test-fast: setup
	$(RUN) python -m pytest -q -m "not slow"

dry-run: setup
	$(RUN) snakemake -n --quiet rules

clean:
	rm -rf results .snakemake
