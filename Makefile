# Every target installs into .venv first when needed. Versions are pinned by constraints.txt
# (torch==2.13.0 is the CPU wheel; an unpinned torch would pull a multi-GB CUDA build).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: install search serve test test-timm bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e ".[export,service,test,hf]"
	touch $(STAMP)

# timm needs torchvision, and the registry's torchvision wheels need the registry's own torch build (CUDA
# libraries; it runs on the CPU too), not constraints.txt's CPU wheel: the timm tests (marked `timm`) run in a
# second environment of their own (.venv-timm: 6.7 GB, 3.5 to 7 minutes to install), which .ci/run
# builds; `make search` and `make test` never need it.
VENV_TIMM := .venv-timm
PY_TIMM := $(VENV_TIMM)/bin/python
STAMP_TIMM := $(VENV_TIMM)/.installed

$(STAMP_TIMM): pyproject.toml constraints.txt constraints-timm.txt
	$(PYTHON) -m venv $(VENV_TIMM)
	echo '*' > $(VENV_TIMM)/.gitignore
	grep -v '^torch==' constraints.txt > $(VENV_TIMM)/constraints.txt
	$(PY_TIMM) -m pip install --quiet -c $(VENV_TIMM)/constraints.txt -c constraints-timm.txt -e ".[models,export,service,test]"
	touch $(STAMP_TIMM)

search: $(STAMP)
	$(PY) scripts/search.py --budget 0.3 $(ARGS)

# The search service on http://127.0.0.1:8000 (prints where its bearer token is; ARGS="--port 8001 ...").
serve: $(STAMP)
	$(PY) scripts/serve.py $(ARGS)

# Two test processes (xdist) on a 2-core machine; the Ray tests share one of them (--dist loadgroup), and
# the work goes out in the order tests/conftest.py sets (--no-loadscope-reorder).
test: $(STAMP)
	$(PY) -m pytest -q -n auto --maxprocesses 4 --dist loadgroup --no-loadscope-reorder $(ARGS)

# The tests marked `timm`, in .venv-timm (a missing timm fails them there instead of skipping them).
test-timm: $(STAMP_TIMM)
	AMC_TEST_REQUIRE_TIMM=1 $(PY_TIMM) -m pytest -q -m timm -p no:cacheprovider $(ARGS)

bench: $(STAMP)
	$(PY) scripts/bench.py $(ARGS)

clean:
	rm -rf $(VENV) $(VENV_TIMM) .pytest_cache
