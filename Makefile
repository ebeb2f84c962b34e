# The README's two commands:
#   make lab   - install everything, build, install the kernelspec, start JupyterLab
#   make test  - the same set-up (minus starting JupyterLab), then every test suite
# and, for a release, make dist: the wheel and the sdist, in dist/.
# Each set-up step leaves a stamp in .stamps/ that is newer than the files it depends on, so a
# second run with nothing changed only checks timestamps.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

VENV := .venv
STAMPS := .stamps
PYTHON ?= python3
# Everything below runs with the venv first on PATH: jupyter, python, ruff and the criu wrapper.
export PATH := $(CURDIR)/$(VENV)/bin:$(CURDIR)/node_modules/.bin:$(PATH)
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD := 1

LABEXT_SRC := $(CURDIR)/kernel-plugin/python/kernel_checkpoint/labextension
LABEXT_DEST := $(VENV)/share/jupyter/labextensions/jupyterlab-kernel-checkpoint
ROOT_ARGS := $(if $(filter 0,$(shell id -u)),--allow-root,)
LAB_ARGS ?=

# Inputs of `npm run build` (generated files and build outputs left out).
BUILD_INPUTS := $(shell find src schema style protocol kernel-plugin -type f \
	\( -name '*.ts' -o -name '*.tsx' -o -name '*.js' -o -name '*.json' -o -name '*.css' -o -name '*.svg' \) \
	-not -path '*/node_modules/*' -not -path 'kernel-plugin/lib/*' -not -path 'kernel-plugin/python/*' \
	-not -path '*/__tests__/*' -not -name '*.d.ts' 2>/dev/null) \
	package.json tsconfig.json kernel-plugin/tsconfig.json scripts/bundle-supervisor.mjs \
	scripts/generate-protocol.mjs install.json

.PHONY: help lab test setup lint jest pytest ui-test dist clean distclean

help:
	@echo "make lab    install everything, build, install the kernelspec and start JupyterLab"
	@echo "make test   the same set-up, then lint, jest, pytest and the Galata UI tests"
	@echo "make dist   the wheel and the sdist (production build of the front end), in dist/"

lab: setup
	jupyter lab $(ROOT_ARGS) $(LAB_ARGS)

test: setup
	@$(MAKE) --no-print-directory lint jest pytest ui-test

setup: $(STAMPS)/kernelspec $(STAMPS)/criu $(STAMPS)/ui-npm

$(STAMPS)/apt: scripts/setup-apt.sh
	@mkdir -p $(STAMPS)
	bash scripts/setup-apt.sh
	@touch $@

$(STAMPS)/venv: pyproject.toml scripts/setup-venv.sh | $(STAMPS)/apt
	PYTHON=$(PYTHON) bash scripts/setup-venv.sh $(VENV)
	@touch $@

$(STAMPS)/criu: scripts/setup-criu.sh $(STAMPS)/venv
	bash scripts/setup-criu.sh $(VENV)
	@touch $@

$(STAMPS)/npm: package.json package-lock.json | $(STAMPS)/apt
	bash scripts/npm-ci.sh .
	@touch $@

$(STAMPS)/ui-npm: ui-tests/package.json ui-tests/package-lock.json | $(STAMPS)/apt
	bash scripts/npm-ci.sh ui-tests
	@touch $@

$(STAMPS)/build: $(BUILD_INPUTS) $(STAMPS)/npm $(STAMPS)/venv
	npm run build
	@# The editable install leaves a real folder there (install.json as shared data): replace it
	@# with a link to the build output, as `jupyter labextension develop` does.
	@mkdir -p $(dir $(LABEXT_DEST))
	rm -rf $(LABEXT_DEST)
	ln -s $(LABEXT_SRC) $(LABEXT_DEST)
	@touch $@

$(STAMPS)/kernelspec: $(STAMPS)/build
	kernel-checkpoint install --sys-prefix
	@touch $@

lint: setup
	prettier --check '**/*{.ts,.tsx,.js,.mjs,.cjs,.json,.css}'
	eslint --max-warnings 0 . && echo "eslint: no problems."
	stylelint 'style/**/*.css' && echo "stylelint: no problems."
	ruff check .
	ruff format --check .
	node scripts/generate-protocol.mjs --check && echo "protocol types: up to date with the schema."

# jest waits for ever when a test leaves a handle open (a socket, a timer, a child): the time
# limit turns that into a failure that says so (the whole run takes ~3 min here).
jest: setup
	@timeout --foreground --kill-after=30 15m jest --ci; rc=$$?; \
	if [ $$rc -eq 124 ]; then echo "jest did not exit within 15 min: a test left a handle open (find it with jest --detectOpenHandles)"; fi; \
	exit $$rc

pytest: setup
	$(VENV)/bin/python -m pytest tests

ui-test: setup
	bash scripts/ui-tests.sh

# The production build (minified, no source maps in the labextension) replaces the dev build, then
# `python -m build` (sdist, then the wheel from it) packs it; the venv has the build backend.
dist: setup
	npm run build:prod
	rm -rf dist
	$(VENV)/bin/python -m build --no-isolation --outdir dist .

clean:
	rm -rf $(STAMPS) dist lib kernel-plugin/lib tsconfig.tsbuildinfo kernel-plugin/tsconfig.tsbuildinfo \
		kernel-plugin/python/kernel_checkpoint/labextension kernel-plugin/python/kernel_checkpoint/_node \
		kernel-plugin/python/kernel_checkpoint/protocol ui-tests/test-results ui-tests/playwright-report

distclean: clean
	rm -rf $(VENV) node_modules ui-tests/node_modules
