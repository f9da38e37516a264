PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test docs bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[dev,ray,docs]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/meshlearn run examples/quickstart.toml --out runs/quickstart --overwrite
	$(BIN)/meshlearn plot runs/quickstart -o runs/quickstart/accuracy.png

test: $(STAMP)
	$(BIN)/python -m pytest -q

# the site in site/; --strict: a broken link or docstring fails the build
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

bench: $(STAMP)
	$(BIN)/python benchmarks/sim_scaling.py

clean:
	rm -rf $(VENV) runs build dist site src/*.egg-info
