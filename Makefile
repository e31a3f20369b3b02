# The README's two commands: `make run` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test test-numeric-path install data lint bench docs clean

# (Re)create the virtual environment and install the package with its dev tools whenever
# pyproject.toml or constraints.txt changes: pyproject.toml says which versions work (ranges),
# constraints.txt which exact ones `make` installs (fast and repeatable from the local mirror).
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $@

install: $(STAMP)

# Fashion-MNIST, the offline default: Debian's dataset-fashion-mnist package where root + apt are
# available (the DataModule finds /usr/share/datasets/fashion-mnist by itself); elsewhere the
# DataModule downloads it through torchvision into ./data.
data:
	@if [ -d /usr/share/datasets/fashion-mnist ]; then \
	  echo "Fashion-MNIST: /usr/share/datasets/fashion-mnist"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; } || \
	  echo "could not install dataset-fashion-mnist; lit-defense will download Fashion-MNIST into ./data"; \
	else \
	  echo "not root or no apt-get: lit-defense will download Fashion-MNIST into ./data"; \
	fi

# The main job on the embedded default (Fashion-MNIST): train the undefended teacher, the T=100
# distillation teacher and student, two masked models and the adversarially trained baseline, then
# audit them all into runs/<timestamp>-<profile>/report.md. `make run PROFILE=full` for paper-scale
# epochs. Re-running resumes the unfinished run and skips finished stages.
PROFILE ?= quick
run: install data
	$(BIN)/lit-defense run --profile $(PROFILE)

test: install
	$(BIN)/ruff check lit_defense callbacks tests benchmarks
	$(BIN)/python -m pytest

# The tests whose verdicts and claims rest on trained models' numbers (marker `numeric_path`), again
# under another of torch's CPU kernel sets: `default` (no SIMD), `avx2` or `avx512` (never above what
# the CPU has: grep -o 'avx512[a-z_]*' /proc/cpuinfo). CI runs it with `default`.
CAPABILITY ?= default
test-numeric-path: install
	ATEN_CPU_CAPABILITY=$(CAPABILITY) $(BIN)/python -m pytest -m numeric_path

lint: install
	$(BIN)/ruff check lit_defense callbacks tests benchmarks

# The documentation site (docs/ and the API reference from the docstrings) into site/; a warning
# (a broken link, a page missing from the nav, a reference to code that is gone) fails the build.
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

bench: install data
	$(BIN)/python benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) runs site *.egg-info .pytest_cache .ruff_cache
