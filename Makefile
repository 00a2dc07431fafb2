# SD-FSMIS desktop: set-up, run, test. `make run` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The tested versions of everything installed (README: "Dependency versions"); `make lock` regenerates it,
# `make check-latest` builds and tests against the newest releases instead (CONSTRAINTS empty).
CONSTRAINTS ?= requirements/constraints.txt
PIP_C := $(if $(CONSTRAINTS),-c $(CONSTRAINTS))

.PHONY: setup run demo test lint format bench clean package-setup icons bundle bundle-check lock check-latest \
	screenshots

setup: $(VENV)/.installed

# The build tools are pinned too, and the project is built with them (no build isolation, which would fetch
# the newest setuptools).
$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade $(PIP_C) pip setuptools wheel
	$(BIN)/python -m pip install --quiet --no-build-isolation $(PIP_C) -e ".[dev]"
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

# README's pictures, made from the demo study offscreen (docs/images/*.png): look at them before committing
screenshots: setup
	QT_QPA_PLATFORM=offscreen $(BIN)/python docs/make_screenshots.py

bench: setup
	$(BIN)/python bench/bench_loader.py
	$(BIN)/python bench/bench_inference.py --arch tiny

# ---- installers (README: "Building the installers")
# `make bundle`: PyInstaller one-folder bundle in dist/sd-fsmis, its frozen checks (--self-test, a tiny model
# created and loaded) and, on Linux, dist/sd-fsmis-VERSION-linux-ARCH.tar.gz. `make bundle-check` (CI) also
# unpacks the tarball, installs it into a throw-away home, runs the installed command and uninstalls it.
package-setup: $(VENV)/.installed-package

$(VENV)/.installed-package: $(VENV)/.installed pyproject.toml $(CONSTRAINTS)
	$(BIN)/python -m pip install --quiet --no-build-isolation $(PIP_C) -e ".[dev,package]"
	touch $@

icons: setup
	QT_QPA_PLATFORM=offscreen $(BIN)/python packaging/make_icons.py

# With the CHAOS data beside the checkout (../shared/data/chaos-t2), the frozen checks also train 2 steps.
CHECK_DATA ?= $(abspath $(wildcard ../shared/data/chaos-t2))

bundle: package-setup
	PYTHON=$(abspath $(BIN)/python) SD_FSMIS_CHECK_DATA=$(CHECK_DATA) packaging/build.sh

bundle-check: bundle
	packaging/check-install.sh dist/sd-fsmis-*-linux-*.tar.gz

# ---- dependency versions (README: "Dependency versions")
# `make lock`: resolve pyproject's ranges (all extras) and the build tools anew, for every platform and Python
# >= 3.10, into requirements/constraints.txt. Then run `make test bundle-check` before committing it.
lock: setup
	$(BIN)/python -m pip install --quiet $(PIP_C) uv
	$(BIN)/uv pip compile pyproject.toml requirements/tools.in --extra dev --extra package --universal \
		--python-version 3.10 --upgrade --quiet -o requirements/constraints.txt

# `make check-latest` (not in CI): a fresh .venv-latest with the newest releases pyproject allows, then the
# tests and the bundle with its frozen checks, so that a break from a new release is found on purpose.
check-latest:
	rm -rf .venv-latest
	$(MAKE) VENV=.venv-latest CONSTRAINTS= test bundle-check

clean:
	rm -rf $(VENV) .venv-latest build dist *.egg-info .pytest_cache .ruff_cache
