# Two commands do everything on a fresh Debian/Ubuntu machine:
#   make demo   - set up, then run protocols/demo.yaml as a dry run (window if there
#                 is a display, headless on a virtual clock if there is none)
#   make test   - set up (Python packages, and Xvfb/xdotool when run as root), type-check, run the suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEMO_DATA ?= data-dryrun
HEADLESS := $(if $(DISPLAY),,--headless)

.PHONY: demo test typecheck sysdeps venv bench clean-venv

$(STAMP): setup.cfg pyproject.toml
	@$(PY) -c 'import sys; v=sys.version_info[:2]; sys.exit(0 if (3,10)<=v<=(3,12) else "cuedpain needs Python 3.10-3.12 (PsychoPy does not support %d.%d)" % v)'
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $@

venv: $(STAMP)

sysdeps:
	@sh scripts/install-system-deps.sh

demo: sysdeps $(STAMP)
	$(BIN)/cuedpain run protocols/demo.yaml --participant demo --dry-run $(HEADLESS) --data $(DEMO_DATA) --run next

# two workers, a test file each at a time (a file's fixtures, such as a dataset of dry runs, are built once)
test: sysdeps $(STAMP) typecheck
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=15

# strict typing of experiment/ (setup.cfg [mypy]): an untyped interface between layers fails the build
typecheck: $(STAMP)
	$(BIN)/mypy

bench: sysdeps $(STAMP)
	$(BIN)/python -m benchmarks.run

clean-venv:
	rm -rf $(VENV)
