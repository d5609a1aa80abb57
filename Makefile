# sftlab developer commands. `make demo` and `make test` create .venv on first use.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow venv clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: this version is a CPU build on these machines; a plain `torch` pulls CUDA.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test,models]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/sftlab demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --timeout 600

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow --timeout 1800

clean:
	rm -rf $(VENV) runs
