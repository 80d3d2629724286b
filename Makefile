# Two commands a new user needs, each doing its own set-up:
#   make demo   - CPU sweep on the built-in corpus (AdamW, Muon x 3 FFN widths), then the beta table
#   make test   - the test suite (what .ci/run calls)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# A CPU build of torch is enough for the demo and the tests; on a GPU machine set TORCH_SPEC="torch>=2.9".
TORCH_SPEC ?= torch==2.13.0
RUNS   ?= runs

.PHONY: setup demo test test-fast test-loaded clean-demo

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e '.[dev,data]'
	touch $@

demo: setup
	SPECSWEEP_RUNS=$(RUNS) $(BIN)/specsweep-train -m +sweep=demo
	$(BIN)/specsweep-fit $(RUNS)/demo

# The suite runs on every core (pytest-xdist, at most 8 workers). A test module goes whole to one
# worker, so its module-scoped set-up (the SLURM cluster, the paper grids' plans) runs once.
# PARALLEL= runs it in this one process.
PARALLEL ?= -n logical --maxprocesses=8 --dist loadscope
test: setup
	$(BIN)/python -m pytest -q $(PARALLEL)

test-fast: setup
	$(BIN)/python -m pytest -q $(PARALLEL) -m "not slow and not slurm"

# The suite TIMES times with BURNERS busy-loop processes beside it: green on a loaded machine too.
TIMES   ?= 1
BURNERS ?= 1
test-loaded: setup
	$(BIN)/python tests/under_load.py --times $(TIMES) --burners $(BURNERS) -- $(BIN)/python -m pytest -q $(PARALLEL)

clean-demo:
	rm -rf $(RUNS)/demo
