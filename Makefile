# The whole setup is two commands: `make demo` (main job on the tiny CPU config) and `make test`.
# Both create .venv with pip when it is missing and install everything they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.capojax-installed

.PHONY: demo test test-slow test-vllm install bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: 2.13.0 is the local CPU wheel; anything else would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m capojax.train --config=configs/tiny_capo.py --workdir=runs/tiny_capo

test: $(STAMP)
	$(PY) -m pytest -q

# pytest exits 5 when a marker selects nothing: that is not a failure here.
test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow; rc=$$?; [ $$rc -eq 5 ] && exit 0 || exit $$rc

test-vllm: $(STAMP)
	bash scripts/setup_vllm_venv.sh
	$(PY) -m pytest -q -m vllm; rc=$$?; [ $$rc -eq 5 ] && exit 0 || exit $$rc

clean:
	rm -rf runs .pytest_cache
