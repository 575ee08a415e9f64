# Everything runs from a local .venv, created on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
ARGS   ?=

.PHONY: setup test serve demo ingest exchange bench notebook clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@# a venv left half-made by an interrupted setup has no pip: make it again
	@$(BIN)/python -m pip --version >/dev/null 2>&1 || { rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest $(ARGS)

serve: $(STAMP)
	$(BIN)/panel serve --warm --address 127.0.0.1 dashboard/app.py --show $(if $(ARGS),--args $(ARGS),)

demo: $(STAMP)
	$(BIN)/panel serve --warm --address 127.0.0.1 dashboard/app.py --show --args --demo $(ARGS)

bench: $(STAMP)
	for f in benchmarks/bench_*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

# JupyterLab on notebooks/ (explore.ipynb and history.ipynb), opening history.ipynb
notebook: $(STAMP)
	$(BIN)/jupyter lab notebooks/ --LabApp.default_url=/lab/tree/history.ipynb

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache test-artifacts
