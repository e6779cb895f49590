# Set-up and the two main entry points. `make demo` runs the main job, `make test` the test suite.
PYTHON ?= python3
VENV ?= .venv
PIP := $(VENV)/bin/pip
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test browser clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, pinned, so pip takes the local wheels instead of downloading a CUDA build.
	$(PIP) install -q -c constraints.txt torch torchvision
	$(PIP) install -q -c constraints.txt -e ".[ray,test,export]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mrcnn demo --out mrcnn-demo

test: $(STAMP) browser
	$(PY) -m pytest -q --durations=25

# Debian's Chromium for the web-page test (tests/pipelines/test_web.py skips, saying why, without it).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo -n)
browser:
	@command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium; } || \
		echo "make browser: could not install chromium; the web-page test will be skipped"

clean:
	rm -rf $(VENV) mrcnn-demo .pytest_cache
