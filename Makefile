# hvdump: `make demo` and `make test` work on a fresh Debian machine as root.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.hvdump-installed
SRC    := pyproject.toml setup.py $(wildcard native/*.c native/*.h native/*.py)

.PHONY: all setup system-deps demo test test-real test-firmware dist lint bench bench-makedumpfile clean

all: setup

system-deps:
	@sh scripts/install-system-deps.sh

$(STAMP): $(SRC)
	@sh scripts/install-system-deps.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" sh scripts/demo.sh

test: setup
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/pytest -q -p no:cacheprovider -m "not real and not firmware"

# The pipeline on real ppc64 kernels booted under QEMU (tests/test_real_kernel.py):
# downloads Debian 12's and 13's ppc64el kernels, their debug info and busybox
# (cached in ~/.cache/hvdump-real), about 3 minutes once cached.
test-real: setup
	$(BIN)/pytest -q -p no:cacheprovider -m real -s

# fadump on QEMU's PAPR firmware with hvdump inside the real capture kernel
# (tests/test_real_firmware.py): downloads QEMU 11 and a ppc64el userland from
# Debian, builds a guest kernel with fadump (about 8 minutes, once; all cached in
# ~/.cache/hvdump-firmware), then about 10 minutes.
test-firmware: setup
	$(BIN)/pytest -q -p no:cacheprovider -m firmware -s

# The sdist and self-contained wheels for x86_64 and ppc64le in dist/ (the codec
# libraries bundled by auditwheel; ppc64le cross-compiled; reproducible).
dist: setup
	$(BIN)/python scripts/build_dist.py --out dist

bench: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python bench/run_all.py

# hvdump convert against makedumpfile on 4 GiB vmcores (about 10 minutes).
bench-makedumpfile: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python bench/vs_makedumpfile.py

clean:
	rm -rf $(VENV) build dist *.egg-info demo-work bench/out
	find . -name __pycache__ -prune -exec rm -rf {} +
