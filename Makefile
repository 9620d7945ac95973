# Two commands set everything up on a fresh Debian machine: `make run` and `make test`.
SHELL := /bin/bash
APT_PACKAGES := qemu-system-x86 busybox-static dropbear-bin cpio gcc libc6-dev make gpgv \
                debian-archive-keyring xz-utils zstd e2fsprogs python3 python3-venv \
                git flex bison bc libelf-dev ccache musl-tools dpkg-dev libcap-dev
# Only the tests need a browser (report.html is checked in headless chromium) and gpg (they sign
# simulated archives with throwaway keys).
TEST_APT_PACKAGES := chromium gnupg
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test test-bisect bench soak deps test-deps venv probe lint unit clean

# Exit 1 means the run finished and found something new (a deviation no known-deviations entry
# expects): a result, not a failure of `make run` (2 and 3 still are).
run: deps venv probe
	$(BIN)/harness run $(ARGS) || [ $$? -eq 1 ]

test: test-deps venv probe lint
	$(BIN)/pytest -v -rs -m "not bisect" $(PYTEST_ARGS)

# The full bisect: Debian's linux-source made a git tree, a kernel built and booted per step.
# Not in `make test`: a fresh cache spends most of its time on the first kernel build.
test-bisect: test-deps venv probe
	$(BIN)/pytest -v -rs -s -m bisect $(PYTEST_ARGS)

# One formatter: ruff format (its check fails the lint), then ruff's rules and strict typing.
lint: venv
	$(BIN)/ruff format --check harness tests bench
	$(BIN)/ruff check harness tests bench
	$(BIN)/mypy

unit: venv probe
	$(BIN)/pytest -q -m "not integration"

bench: deps venv probe
	$(BIN)/python bench/bench.py $(ARGS)

soak: deps venv probe
	$(BIN)/python bench/soak.py $(ARGS)

# Installs what is missing as root; otherwise prints the one command that would, and stops.
deps test-deps: PACKAGES = $(APT_PACKAGES)
test-deps: PACKAGES += $(TEST_APT_PACKAGES)
deps test-deps:
	@missing=$$(for p in $(PACKAGES); do \
	    dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; \
	  done | tr '\n' ' '); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then \
	  echo "Missing packages; run this once, then make again:"; \
	  echo "  sudo apt-get install -y --no-install-recommends $$missing"; exit 1; \
	fi; \
	echo "installing: $$missing"; \
	apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

probe:
	$(MAKE) -s -C guest-tests

clean:
	$(MAKE) -s -C guest-tests clean
	rm -rf $(VENV) build *.egg-info
