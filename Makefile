# Set-up and checks. `make install` is idempotent: a second run only re-checks the venv.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# The tested torch pair (see DEVELOPERS.md); override with `make install TORCH_PAIR="torch==X torchvision==Y"`.
TORCH_PAIR ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed

.PHONY: install test lint format clean demo bench docs

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PAIR)
	$(BIN)/python -m pip install -q -e ".[dev]" $(TORCH_PAIR)
	touch $(STAMP)

demo: install
	$(BIN)/mmrad demo --out demo_out

# Every benchmark measures its figure and baseline side by side and records them in bench/results.json;
# the docs' benchmarks page renders its table from that file (bench_table.py prints it). Add DEVICE=cuda on a GPU.
DEVICE ?= cpu
BENCH_SCRIPTS := bench_startup bench_labeler bench_io bench_corpus bench_zeroshot bench_efficiency bench_lora \
	bench_scale bench_demo

bench: install
	@for s in $(BENCH_SCRIPTS); do \
		echo "== scripts/$$s.py"; \
		HF_HUB_OFFLINE=1 $(BIN)/python scripts/$$s.py --device $(DEVICE) || exit 1; \
	done
	$(BIN)/python scripts/bench_table.py

test: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

# The documentation site (mkdocs.yml, pages in docs/) into site/. --strict makes every warning (a broken link or
# anchor, a docstring griffe cannot read) a failure; a config field without help fails it too (docs/hooks).
# `python -m` puts this folder first on sys.path, so the docs describe ./mmrad.
docs: install
	HF_HUB_OFFLINE=1 NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict -d site

lint: install
	$(BIN)/ruff check mmrad tests scripts docs
	$(BIN)/ruff format --check mmrad tests scripts docs

format: install
	$(BIN)/ruff check --fix mmrad tests scripts docs
	$(BIN)/ruff format mmrad tests scripts docs

clean:
	rm -rf $(VENV) build *.egg-info site
