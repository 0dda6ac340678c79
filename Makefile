# Set-up and checks. `make install` is idempotent: a second run only re-checks the venv.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# The tested torch pair (see DEVELOPERS.md); override with `make install TORCH_PAIR="torch==X torchvision==Y"`.
TORCH_PAIR ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed

.PHONY: install test lint format clean demo bench

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
# the README's Performance table is rendered from that file. Add DEVICE=cuda on a GPU machine.
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

lint: install
	$(BIN)/ruff check mmrad tests scripts
	$(BIN)/ruff format --check mmrad tests scripts

format: install
	$(BIN)/ruff check --fix mmrad tests scripts
	$(BIN)/ruff format mmrad tests scripts

clean:
	rm -rf $(VENV) build *.egg-info
