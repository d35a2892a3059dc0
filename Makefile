# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# The peers (openai/CLIP, OpenCLIP, transformers) in their own venv, for the tests against them and the
# benchmarks, on the project's torch. open_clip needs torchvision, whose PyPI wheel is a CUDA build that
# does not load its ops next to the CPU torch: benchmarks/openclip_shim.py declares the two it registers.
BENCH_VENV ?= .bench-venv
BENCH_STAMP := $(BENCH_VENV)/.installed

.PHONY: venv demo test lint clean peers

$(STAMP): pyproject.toml constraints/test.txt
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	# torch 2.13.0 resolves to the CPU wheel on these machines; a newer pin pulls a multi-GB CUDA build.
	$(VPY) -m pip install -q "torch==2.13.0"
	# constraints/test.txt pins the versions the suite passed on: without it pip's resolver backtracks
	# (moto, playwright, transformers) past its depth limit and gives up.
	$(VPY) -m pip install -q -c constraints/test.txt -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VPY) -m torchclip.demo

test: $(STAMP)
	$(VPY) -m ruff check src tests benchmarks
	$(VPY) -m pytest -q -n 2 tests

$(BENCH_STAMP): pyproject.toml constraints/peers.txt
	test -x $(BENCH_VENV)/bin/python || $(PY) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install -q --upgrade pip
	$(BENCH_VENV)/bin/pip install -q -c constraints/peers.txt "torch==2.13.0" "torchvision==0.28.0" \
		open_clip_torch openai-clip "setuptools<81" transformers pytest webdataset pandas \
		clip_benchmark requests "numpy<2.4"
	# clip_benchmark imports requests without declaring it, and its accuracy() converts 1-element arrays
	# with float(), which numpy 2.4 refuses.
	$(BENCH_VENV)/bin/pip install -q -c constraints/peers.txt -e .
	touch $(BENCH_STAMP)

peers: $(BENCH_STAMP)

lint: $(STAMP)
	$(VPY) -m ruff check src tests benchmarks

clean:
	rm -rf $(VENV) $(BENCH_VENV) .pytest_cache .ruff_cache
