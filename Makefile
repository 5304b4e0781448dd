# Outpost: `make demo` runs it, `make test` checks it. Both set everything up themselves.
VENV ?= .venv
PY := $(VENV)/bin/python
# Test modules run on parallel workers, one per core (at most 4; a module's tests stay on one
# worker, so its fixtures are built once); the ten slowest tests are listed at the end of
# every run (the suite's time is watched).
PYTEST_ARGS ?= -n auto --maxprocesses 4 --dist loadfile --durations=10
# Portable llama.cpp build: a native one crashes in AMX code on some CPUs, and a package for
# many sites' CPUs needs it anyway.
export CMAKE_ARGS := -DGGML_NATIVE=OFF

.PHONY: setup demo demo-model test lint format protos protos-check pytest bench clean wheelhouse deb

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

demo-model: setup
	$(VENV)/bin/outpost-agent demo-model

demo: setup
	$(PY) scripts/demo.py

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy packaging/build_deb.py packaging/wheelhouse.py

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

protos: setup
	$(PY) protos/generate.py

protos-check: setup
	$(PY) protos/generate.py --check

# Every wheel the agent needs, at the versions the tests ran with, for installs with no network
# (air-gapped sites) and for the Debian package. Needs the network (or pip's cache) once.
wheelhouse: setup
	$(PY) packaging/wheelhouse.py dist/wheelhouse

# dist/outpost-agent_VERSION_amd64.deb (DEB_ARGS: e.g. --version 0.1.0-2 --compression gzip)
deb: wheelhouse
	$(PY) packaging/build_deb.py --wheelhouse dist/wheelhouse --out dist $(DEB_ARGS)

# The tests start their own throwaway PostgreSQL server from Debian's binaries (no service),
# drive Debian's chromium for the console's browser tests (Playwright, no browser download),
# and build, lintian-check and install the Debian package from the wheelhouse (as root).
pytest: setup wheelhouse
	$(VENV)/bin/outpost-agent demo-model >/dev/null
	test -d /usr/lib/postgresql || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql)
	test -x /usr/bin/chromium || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)
	test -x /usr/bin/lintian || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq lintian)
	test -x /usr/bin/dpkg-shlibdeps || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dpkg-dev)
	test -x /usr/bin/systemd-analyze || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd)
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test: lint protos-check pytest

bench: setup
	$(PY) benchmarks/agent_throughput.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache dist
