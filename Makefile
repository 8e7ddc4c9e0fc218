# Set-up and everyday commands. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# The shared modality-v1 data set (training and tests); override with DATA=...
DATA   ?= $(or $(XAI_DATASET_DIR),../shared/datasets/modality-v1)
# Real non-scan figures (figure types); override with OTHER_DATA=...
OTHER_DATA ?= $(dir $(DATA))other-v1

.PHONY: install demo test test-fast model bench clean browser

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/xai-pipeline demo

test: install browser
	XAI_DATASET_DIR=$(DATA) $(BIN)/python -m pytest

# Debian's chromium renders the HTML report in a test; installed when missing and we may.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
		echo "chromium not installed: the report rendering test will be skipped (or fail under CI=true)"

test-fast: install
	$(BIN)/python -m pytest tests/unit

# Reproduce the bundled default model from the shared data (about 15 minutes on 2 CPU cores).
HOLDOUT := agchung/Actualmed-COVID-chestxray-dataset
model: install
	$(BIN)/xai-pipeline train --data $(DATA)/manifest.jsonl --out build/model --holdout-sources $(HOLDOUT)
	$(BIN)/python -m xai_pipeline.train.figure_type --model build/model/model.safetensors --scans $(DATA)/manifest.jsonl \
		--other $(OTHER_DATA)/manifest.jsonl --out build/model/model-types.safetensors --version 1.1.0 --card build/model/MODEL_CARD.md
	$(BIN)/xai-pipeline evaluate --model build/model/model-types.safetensors --data $(DATA)/manifest.jsonl \
		--held-out --holdout-sources $(HOLDOUT) --faithfulness --out build/model/held-out
	$(BIN)/python -m xai_pipeline.train.model_card --evaluation build/model/held-out --card build/model/MODEL_CARD.md --held-out
	cp build/model/model-types.safetensors xai_pipeline/weights/modality-default.safetensors
	cp build/model/MODEL_CARD.md build/model/faithfulness.png build/model/class_mean_crm.png xai_pipeline/weights/

clean:
	rm -rf build demo-output .pytest_cache
