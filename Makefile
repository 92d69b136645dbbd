# Two entry points a new machine needs: `make demo` (the main job on the embedded default) and `make test`.
# Both create the virtual environment on first use (torch 2.14.1 + torchvision 0.29.1, then synthrec[all]).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.synthrec-installed

.PHONY: env demo test lint crds constraints clean-demo image

env: $(STAMP)

# constraints.txt pins every package to the versions the tests passed with; the image installs the same.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[all]'
	touch $(STAMP)

# Re-resolve every dependency to its newest allowed release in a scratch environment and write the pins
# (then run `make test` on them before committing). constraints.txt is written only when the resolve worked.
constraints:
	rm -rf .constraints-venv
	$(PYTHON) -m venv .constraints-venv
	.constraints-venv/bin/python -m pip install --quiet --upgrade pip
	.constraints-venv/bin/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	.constraints-venv/bin/python -m pip install --quiet '.[all]'
	{ echo "# Every package synthrec installs, pinned to the versions its tests passed with (make constraints)."; \
	  echo "# Used by make env and the Dockerfile as pip constraints: only packages that get installed are affected."; \
	  .constraints-venv/bin/python -m pip freeze --exclude synthrec | LC_ALL=C sort -f; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -rf .constraints-venv build

# The embedded default: build the toy world (tiny models trained on drawn shapes, once, a few minutes, with a
# progress bar), then run the whole quickstart on this machine (`synthrec run`: prompts, generation, CLIP
# filter, classifier tuning) into $(DEMO_STORAGE)/; it prints a summary and where the HTML report is.
# Re-running continues from the committed shards.
DEMO_STORAGE ?= synthrec-out

demo: $(STAMP)
	$(BIN)/synthrec toy-world
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

# The image (Dockerfile), tagged VERSION-CUDA_VARIANT (and plain VERSION for the default cu130), with the
# OCI labels version and revision from pyproject.toml and git. E.g. for nodes with a CUDA 12 driver:
#   make image CUDA_VARIANT=cu128 IMAGE=registry.example.com/ml/synthrec
IMAGE ?= synthrec
CUDA_VARIANT ?= cu130
VERSION := $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' pyproject.toml)
REVISION := $(shell git rev-parse HEAD 2>/dev/null || echo unknown)

image:
	docker build --build-arg CUDA_VARIANT=$(CUDA_VARIANT) --build-arg VERSION=$(VERSION) \
	  --build-arg REVISION=$(REVISION) -t $(IMAGE):$(VERSION)-$(CUDA_VARIANT) \
	  $(if $(filter cu130,$(CUDA_VARIANT)),-t $(IMAGE):$(VERSION)) .
