# The commands a newcomer needs: `make demo` (the main job), `make test` (the fast tier, for
# every edit) and `make test-all` (everything, what CI runs). All create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PKGS := crypto dag evolution node simulations

.PHONY: install demo test test-all lint typecheck pytest pytest-all bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/qudag-node testnet --nodes 4 --task mnist1d --search es --generations 3000 \
		--until-fitness 0.48 --target 0.48 --publish-every 20 --baseline --out demo-out --force

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# mypy cannot follow setuptools' editable-install hook, so it checks a tree of symlinks that
# mirrors the installed package names (qudag.<folder>).
typecheck: $(STAMP)
	rm -rf .typecheck && mkdir -p .typecheck/qudag
	for p in $(PKGS); do ln -s ../../$$p .typecheck/qudag/$$p; done
	cd .typecheck && ../$(BIN)/mypy --config-file ../pyproject.toml -p qudag

# Fast tier: deterministic, single-process tests. Tests that start processes, daemons or network
# namespaces (`multiprocess`) or take more than ~10 s (`slow`) run only in `pytest-all`.
pytest: $(STAMP)
	$(BIN)/pytest -q -m 'not slow and not multiprocess'

pytest-all: $(STAMP)
	$(BIN)/pytest -q --durations=25

test: lint typecheck pytest

test-all: lint typecheck pytest-all

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .typecheck .pytest_cache .mypy_cache .ruff_cache build *.egg-info
