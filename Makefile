# Every target installs into .venv first when needed. Versions are pinned by constraints.txt
# (torch==2.13.0 is the CPU wheel; an unpinned torch would pull a multi-GB CUDA build).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: install search serve test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e ".[export,service,test]"
	touch $(STAMP)

search: $(STAMP)
	$(PY) scripts/search.py --budget 0.3 $(ARGS)

# The search service on http://127.0.0.1:8000 (prints where its bearer token is; ARGS="--port 8001 ...").
serve: $(STAMP)
	$(PY) scripts/serve.py $(ARGS)

# Two test processes (xdist) on a 2-core machine; the Ray tests share one of them (--dist loadgroup), and
# the work goes out in the order tests/conftest.py sets (--no-loadscope-reorder).
test: $(STAMP)
	$(PY) -m pytest -q -n auto --maxprocesses 4 --dist loadgroup --no-loadscope-reorder $(ARGS)

bench: $(STAMP)
	$(PY) scripts/bench.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
