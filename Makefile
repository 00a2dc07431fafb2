# SD-FSMIS desktop: set-up, run, test. `make run` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup run demo test lint format bench clean package-setup icons bundle bundle-check

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

run: setup
	$(BIN)/sd-fsmis

demo: setup
	$(BIN)/sd-fsmis --demo

test: setup
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: setup
	$(BIN)/python bench/bench_loader.py
	$(BIN)/python bench/bench_inference.py --arch tiny

# ---- installers (README: "Building the installers")
# `make bundle`: PyInstaller one-folder bundle in dist/sd-fsmis, its frozen checks (--self-test, a tiny model
# created and loaded) and, on Linux, dist/sd-fsmis-VERSION-linux-ARCH.tar.gz. `make bundle-check` (CI) also
# unpacks the tarball, installs it into a throw-away home, runs the installed command and uninstalls it.
package-setup: $(VENV)/.installed-package

$(VENV)/.installed-package: $(VENV)/.installed pyproject.toml
	$(BIN)/python -m pip install --quiet -e ".[dev,package]"
	touch $@

icons: setup
	QT_QPA_PLATFORM=offscreen $(BIN)/python packaging/make_icons.py

# With the CHAOS data beside the checkout (../shared/data/chaos-t2), the frozen checks also train 2 steps.
CHECK_DATA ?= $(abspath $(wildcard ../shared/data/chaos-t2))

bundle: package-setup
	PYTHON=$(abspath $(BIN)/python) SD_FSMIS_CHECK_DATA=$(CHECK_DATA) packaging/build.sh

bundle-check: bundle
	packaging/check-install.sh dist/sd-fsmis-*-linux-*.tar.gz

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache
