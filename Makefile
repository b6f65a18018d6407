# The two commands of the README. Both install what they need first.
PIP ?= python -m pip
OUT ?= out/afmc-tiny
SEEDS ?= 5

.PHONY: demo test test-fast install install-test lint bench

install:
	$(PIP) install -q -e .

install-test:
	$(PIP) install -q -e '.[test]'

# Compile the built-in afmc-tiny for analog hardware, then evaluate FP vs analog.
demo: install
	afmc compile afmc-tiny --target aimc -o $(OUT) --force
	afmc eval $(OUT) --text stdlib:heldout --seeds $(SEEDS)
	@echo "next: afmc report $(OUT); lm-evaluation-harness tasks: pip install -e '.[lm-eval]', then afmc lm-eval --model afmc --model_args path=$(OUT) (docs/lm-eval.md)"

test: install-test
	ruff check afmc tests benchmarks scripts
	python -m pytest -q -n 2 --dist loadgroup

# The fast tier for every change: the tests not marked slow (no afmc-tiny compile).
test-fast: install-test
	ruff check afmc tests benchmarks scripts
	python -m pytest -q -n 2 --dist loadgroup -m "not slow"

bench: install-test
	python benchmarks/sim_overhead.py
