# Two entry points a new machine needs: `make demo` (the main job on the embedded default) and `make test`.
# Both create the virtual environment on first use (torch 2.14.1 + torchvision 0.29.1, then synthrec[all]).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.synthrec-installed

.PHONY: env demo test lint crds clean-demo

env: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install --quiet -e '.[all]'
	touch $(STAMP)

# The embedded default: build the tiny offline models (random weights, once), then run the whole quickstart
# on this machine (`synthrec run`: prompts, generation, CLIP filter, classifier tuning) into $(DEMO_STORAGE)/;
# it prints a summary and where the HTML report is. Re-running continues from the committed shards.
DEMO_STORAGE ?= synthrec-out

demo: $(STAMP)
	$(BIN)/synthrec tiny-models
	$(BIN)/synthrec run examples/quickstart.yaml --storage $(DEMO_STORAGE)

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/synthrec crds --check --out crds/

crds: $(STAMP)
	$(BIN)/synthrec crds --out crds/

clean-demo:
	rm -rf $(DEMO_STORAGE)
