# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo test lint clean

$(STAMP): pyproject.toml
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	# torch 2.13.0 resolves to the CPU wheel on these machines; a newer pin pulls a multi-GB CUDA build.
	$(VPY) -m pip install -q "torch==2.13.0"
	$(VPY) -m pip install -q -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VPY) -m torchclip.demo

test: $(STAMP)
	$(VPY) -m ruff check src tests benchmarks
	$(VPY) -m pytest -q -n 2 tests

lint: $(STAMP)
	$(VPY) -m ruff check src tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
