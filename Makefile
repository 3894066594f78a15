# The two commands of the README: `make demo` (the main job on the toy world) and
# `make test`. Both create or reuse the virtual environment .venv inside the checkout and
# reinstall only when pyproject.toml changes (its hash is kept in .venv/.rtdecode-installed).

VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.rtdecode-installed

.PHONY: demo test venv lint bench-simulate bench-startup clean

venv:
	@hash=$$(sha256sum pyproject.toml | cut -c1-64); \
	if [ ! -x "$(PY)" ]; then echo "creating $(VENV)"; $(PYTHON) -m venv "$(VENV)" || exit 1; fi; \
	if [ "$$(cat "$(STAMP)" 2>/dev/null)" != "$$hash" ]; then \
	  echo "installing rtdecode and its dependencies into $(VENV) (first time: a few minutes)"; \
	  "$(PY)" -m pip install --disable-pip-version-check -q -e ".[dev]" || exit 1; \
	  echo "$$hash" > "$(STAMP)"; \
	fi

demo: venv
	$(VENV)/bin/rtdecode demo

test: venv
	$(PY) -m pytest -q

lint: venv
	$(VENV)/bin/ruff check rtdecode tests bench export

bench-simulate: venv
	$(PY) bench/simulate_study.py

# serve start-up time and RSS, onnxruntime vs torch; needs `rtdecode export --model
# runs/zoo/sad --data DATA` first (override with MODEL=... STORE=...)
bench-startup: venv
	$(PY) bench/serve_startup.py --model $(or $(MODEL),runs/zoo/sad) --store $(or $(STORE),engines)

clean:
	rm -rf data runs .pytest_cache
