# mnm — Mix-and-Match tuning pipeline. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
TEST_WORKERS ?= 2
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.mnm-installed
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1
MNM := $(BIN)/mnm
SHARED ?= ../shared
CAMVID_ROOT ?= $(SHARED)/data/camvid
MSRC_ROOT ?= $(SHARED)/data/msrc
EVAL_SPLIT ?= val
MARGIN ?= 2.1
VOC_ROOT ?=
PROXY_IMAGES ?=
CITYSCAPES_ROOT ?=
PIPELINE_ARGS ?=
FRACTIONS ?=
SEEDS ?=
ARMS ?=
STAGES ?=
OUT ?=
SET ?=
FALLBACK_CHECKPOINT ?=
MM_SWEEP_STAGES := $(shell sed -n 's/^ *- *{\{0,1\}name: \(mm_[a-z0-9_]*\).*/\1/p' conf/benchmarks/camvid_mm_sweep.yaml 2>/dev/null)
RUN ?= runs
WANDB ?= $(BIN)/wandb
WANDB_SYNC_TIMEOUT ?= 900
# Every command that runs stages takes SET="KEY=VALUE ..." (each one a --set) and FALLBACK_CHECKPOINT=1 (resume
# from the newest readable checkpoint when a last.ckpt is corrupt); the benchmarks and protocols also take OUT=.
FALLBACK_ARG = $(if $(filter-out 0 no false,$(FALLBACK_CHECKPOINT)),--fallback-checkpoint)
RUN_ARGS = $(foreach s,$(SET),--set '$(s)') $(FALLBACK_ARG)
# --out OUT when given, else --out $(1) (no --out when both are empty: the command's default, runs/<name>)
out_arg = $(if $(or $(OUT),$(1)),--out '$(or $(OUT),$(1))')
export NO_ALBUMENTATIONS_UPDATE := 1
export WANDB_MODE ?= offline

.DEFAULT_GOAL := help
.PHONY: help install test test-fast lint demo speed speed-data gpu-check bench bench-data camvid-cpu camvid-cpu-margin camvid-label-efficient msrc-label-efficient camvid-semi camvid-semi-600 camvid-mm-sweep camvid-unsupervised classify-cpu classify-camvid voc-colorize voc-random \
	cityscapes-colorize cityscapes-random colorize jigsaw mix-match segment wandb-sync clean

help: ## list the targets
	@grep -E '^[a-zA-Z0-9_ -]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  \033[1m%-22s\033[0m %s\n", $$1, $$2}'

$(STAMP): setup.cfg pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(if $(strip $(TORCH_PIN)),$(BIN)/pip install -q $(TORCH_PIN))
	$(BIN)/pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install mnm (editable, with dev extras)

test: $(STAMP) ## run the test suite (CPU; TEST_WORKERS processes, each test file in one)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

test-fast: $(STAMP) ## run the tests not marked slow (no trained runs: the edit loop)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not slow" tests

lint: $(STAMP) ## ruff, and the import contract of setup.cfg (lint-imports: layers downwards only, a core free of Lightning)
	$(BIN)/ruff check src stages datamodules tests
	BIN=$(BIN) .ci/lint-imports

demo: $(STAMP) ## synthetic data, random/M&M(graph)/M&M(random) arms on CPU (OUT=) -> runs/demo/report.md
	$(MNM) demo $(call out_arg,runs/demo) $(FALLBACK_ARG)

speed: $(STAMP) ## speed and cost of an M&M step, graph scaling, fine-tune, loaders -> runs/speed/speed.json
	$(MNM) speed --out runs/speed --camvid-root $(CAMVID_ROOT)

speed-data: $(STAMP) ## data-loader images/s on CamVid (0 and 2 workers)
	$(MNM) speed --out runs/speed --camvid-root $(CAMVID_ROOT) --only data

gpu-check: $(STAMP) ## on a CUDA machine: environment, CPU/GPU agreement, M&M step times vs the paper, tiny on the GPU (~10 min) -> runs/gpu-check/gpu_check.md
	$(MNM) gpu-check --out runs/gpu-check

bench: speed ## old name of `make speed` (kept for one release)

bench-data: speed-data ## old name of `make speed-data` (kept for one release)

camvid-cpu: $(STAMP) ## CPU-sized CamVid benchmark (5 arms; OUT=, SET=) -> runs/camvid-cpu/report.md
	@test -d "$(CAMVID_ROOT)" || { echo "CAMVID_ROOT=$(CAMVID_ROOT) is not a folder"; exit 2; }
	$(MNM) benchmark conf/benchmarks/camvid_cpu.yaml $(call out_arg,runs/camvid-cpu) --set data.root=$(CAMVID_ROOT) --eval-split $(EVAL_SPLIT) $(RUN_ARGS)

camvid-cpu-margin: $(STAMP) ## margin ablation of camvid-cpu: its M&M graph arm at MARGIN=2.1 (OUT=, SET=) -> runs/camvid-cpu-margin<MARGIN>/
	@test -d "$(CAMVID_ROOT)" || { echo "CAMVID_ROOT=$(CAMVID_ROOT) is not a folder"; exit 2; }
	$(MNM) benchmark conf/benchmarks/camvid_cpu_margin.yaml $(call out_arg,runs/camvid-cpu-margin$(MARGIN)) \
		--set data.root=$(CAMVID_ROOT) --set margin=$(MARGIN) --eval-split $(EVAL_SPLIT) $(RUN_ARGS)

camvid-label-efficient: $(STAMP) ## CamVid, 1/32, 1/8 and all labels x 3 seeds, 12 arms (M&M, colorization, cluster, pixel contrast, no-skip head), probe, paired differences (resumable; FRACTIONS=, SEEDS=, ARMS= restrict; OUT=, SET=) -> runs/camvid-label-efficient/protocol.md
	@test -d "$(CAMVID_ROOT)" || { echo "CAMVID_ROOT=$(CAMVID_ROOT) is not a folder"; exit 2; }
	$(MNM) protocol conf/benchmarks/camvid_label_efficient.yaml $(call out_arg) --set data.root=$(CAMVID_ROOT) --eval-split $(EVAL_SPLIT) \
		$(if $(FRACTIONS),--fractions $(FRACTIONS)) $(if $(SEEDS),--seeds $(SEEDS)) $(if $(ARMS),--arms $(ARMS)) $(RUN_ARGS)

msrc-label-efficient: $(STAMP) ## MSRC-21, label fractions x 5 seeds, fine-tuning and frozen read-outs, 95% CIs (resumable; FRACTIONS=, SEEDS=, ARMS= restrict; OUT=, SET=) -> runs/msrc-label-efficient/protocol.md
	@test -d "$(MSRC_ROOT)" || { echo "MSRC_ROOT=$(MSRC_ROOT) is not a folder"; exit 2; }
	$(MNM) protocol conf/benchmarks/msrc_label_efficient.yaml $(call out_arg) --set data.root=$(MSRC_ROOT) --eval-split $(EVAL_SPLIT) \
		$(if $(FRACTIONS),--fractions $(FRACTIONS)) $(if $(SEEDS),--seeds $(SEEDS)) $(if $(ARMS),--arms $(ARMS)) $(RUN_ARGS)

camvid-semi: $(STAMP) ## CamVid, 1/8 labels x 3 seeds: supervised-only, M&M, semi, semi + class-wise MIM (SEEDS=, ARMS= restrict; OUT=, SET=) -> runs/camvid-semi/protocol.md
	@test -d "$(CAMVID_ROOT)" || { echo "CAMVID_ROOT=$(CAMVID_ROOT) is not a folder"; exit 2; }
	$(MNM) protocol conf/benchmarks/camvid_semi.yaml $(call out_arg) --set data.root=$(CAMVID_ROOT) --eval-split $(EVAL_SPLIT) \
		$(if $(SEEDS),--seeds $(SEEDS)) $(if $(ARMS),--arms $(ARMS)) $(RUN_ARGS)

SEMI_SHORT_ARMS ?= ft_random semi semi_mim semi_labelled_only semi_lr_x2
camvid-semi-600: $(STAMP) ## the table of docs/results.md §2b: camvid-semi's arms at 600 steps (lr x0.1 at 450), 3 seeds (SEEDS=, ARMS= restrict; OUT=, SET=) -> runs/camvid-semi-600/protocol.md
	@test -d "$(CAMVID_ROOT)" || { echo "CAMVID_ROOT=$(CAMVID_ROOT) is not a folder"; exit 2; }
	$(MNM) protocol conf/benchmarks/camvid_semi.yaml $(call out_arg,runs/camvid-semi-600) --set data.root=$(CAMVID_ROOT) \
		--eval-split $(EVAL_SPLIT) --set ft_steps=600 --set ft_drop=450 $(if $(SEEDS),--seeds $(SEEDS)) \
		--arms $(or $(ARMS),$(SEMI_SHORT_ARMS)) $(RUN_ARGS)

classify-cpu: $(STAMP) ## classification fine-tuning on synthetic shapes: CE vs CE + M&M graph vs CE + random triplets, 3 seeds (OMP_NUM_THREADS=1; SEEDS=, ARMS=, OUT=, SET=) -> runs/classify-synthetic/protocol.md
	OMP_NUM_THREADS=1 $(MNM) protocol conf/benchmarks/classify_synthetic.yaml $(call out_arg,runs/classify-synthetic) \
		$(if $(SEEDS),--seeds $(SEEDS)) $(if $(ARMS),--arms $(ARMS)) $(RUN_ARGS)

classify-camvid: $(STAMP) ## classification fine-tuning on CamVid crops (majority class): CE vs CE + M&M graph vs CE + random triplets, 3 seeds (SEEDS=, ARMS=, OUT=, SET=) -> runs/classify-camvid/protocol.md
	@test -d "$(CAMVID_ROOT)" || { echo "CAMVID_ROOT=$(CAMVID_ROOT) is not a folder"; exit 2; }
	OMP_NUM_THREADS=1 $(MNM) protocol conf/benchmarks/classify_camvid.yaml --set camvid_root=$(CAMVID_ROOT) \
		$(call out_arg,runs/classify-camvid) $(if $(SEEDS),--seeds $(SEEDS)) $(if $(ARMS),--arms $(ARMS)) $(RUN_ARGS)

camvid-unsupervised: $(STAMP) ## CamVid without labels: random / PiCIE-style / FS^4-style clustering x 3 seeds, matched mIoU + linear probe (one core, ~40 min; SEEDS=, OUT=, SET=) -> runs/camvid-unsupervised/unsupervised.md
	@test -d "$(CAMVID_ROOT)" || { echo "CAMVID_ROOT=$(CAMVID_ROOT) is not a folder"; exit 2; }
	OMP_NUM_THREADS=1 $(MNM) unsupervised conf/benchmarks/camvid_unsupervised.yaml --set data.root=$(CAMVID_ROOT) --eval-split $(EVAL_SPLIT) \
		$(call out_arg,runs/camvid-unsupervised) $(if $(SEEDS),--seeds $(SEEDS)) $(RUN_ARGS)

camvid-mm-sweep: $(STAMP) ## M&M candidates on CamVid scored by the kNN probe (STAGES= picks some; OUT=, SET=) -> runs/mm-sweep/
	@test -d "$(CAMVID_ROOT)" || { echo "CAMVID_ROOT=$(CAMVID_ROOT) is not a folder"; exit 2; }
	for s in $(or $(STAGES),$(MM_SWEEP_STAGES)); do \
		$(MNM) pipeline run conf/benchmarks/camvid_mm_sweep.yaml --set data.root=$(CAMVID_ROOT) --only $$s --out '$(or $(OUT),runs/mm-sweep)'/$$s $(RUN_ARGS) || exit 1; \
	done
	$(MNM) probe '$(or $(OUT),runs/mm-sweep)'/*/*/checkpoints/final.ckpt --random alexnet --root $(CAMVID_ROOT) \
		--json '$(or $(OUT),runs/mm-sweep)'/probe.json

define need_dir
	@test -n "$($(1))" -a -d "$($(1))" || { echo "error: set $(1)=<folder> ($(2)); got '$($(1))'"; exit 2; }
endef

voc-colorize: $(STAMP) ## VOC: colorization -> M&M -> fine-tune (VOC_ROOT=..., PROXY_IMAGES=...)
	$(call need_dir,VOC_ROOT,the VOCdevkit/VOC2012 folder)
	$(call need_dir,PROXY_IMAGES,unlabeled images for the colorization stage)
	$(MNM) pipeline run conf/pipelines/voc_colorize_vgg16_graph.yaml --set data.root=$(VOC_ROOT) --set proxy_images=$(PROXY_IMAGES) $(call out_arg) $(RUN_ARGS) $(PIPELINE_ARGS)

voc-random: $(STAMP) ## VOC: random init -> M&M -> fine-tune (VOC_ROOT=...)
	$(call need_dir,VOC_ROOT,the VOCdevkit/VOC2012 folder)
	$(MNM) pipeline run conf/pipelines/voc_random_vgg16_graph.yaml --set data.root=$(VOC_ROOT) $(call out_arg) $(RUN_ARGS) $(PIPELINE_ARGS)

cityscapes-colorize: $(STAMP) ## Cityscapes: colorization -> M&M -> fine-tune (CITYSCAPES_ROOT=..., PROXY_IMAGES=...)
	$(call need_dir,CITYSCAPES_ROOT,the Cityscapes root with leftImg8bit/ and gtFine/)
	$(call need_dir,PROXY_IMAGES,unlabeled images for the colorization stage)
	$(MNM) pipeline run conf/pipelines/cityscapes_colorize_vgg16_graph.yaml --set data.root=$(CITYSCAPES_ROOT) --set proxy_images=$(PROXY_IMAGES) $(call out_arg) $(RUN_ARGS) $(PIPELINE_ARGS)

cityscapes-random: $(STAMP) ## Cityscapes: random init -> M&M -> fine-tune (CITYSCAPES_ROOT=...)
	$(call need_dir,CITYSCAPES_ROOT,the Cityscapes root with leftImg8bit/ and gtFine/)
	$(MNM) pipeline run conf/pipelines/cityscapes_random_vgg16_graph.yaml --set data.root=$(CITYSCAPES_ROOT) $(call out_arg) $(RUN_ARGS) $(PIPELINE_ARGS)

colorize jigsaw mix-match segment: $(STAMP) ## one stage: make <stage> ARGS="fit -c conf/..."
	$(MNM) $@ $(ARGS)

# wandb sync keeps its own logs in $$WANDB_DIR/wandb/ (else ./wandb/): a temporary folder, removed after a good sync
wandb-sync: $(STAMP) ## upload the pipelines' offline W&B runs, runs/*/*/wandb (RUN=runs/<pipeline> for one; needs `wandb login`; stops at once when the W&B server is out of reach, gives up after WANDB_SYNC_TIMEOUT s)
	@dirs=$$(find "$(RUN)" -name '.superseded-*' -prune -o -type d -path '*/wandb/offline-run-*' -print -prune 2>/dev/null | sort); \
	test -n "$$dirs" || { echo "error: no offline W&B runs under $(RUN)/ (pipelines write <run>/<stage>/wandb/offline-run-*)"; exit 2; }; \
	reason=$$($(BIN)/python -m mnm.runs.wandb_mode 2>&1) || { echo "error: the W&B server takes no connection ($$(echo "$$reason" | tail -n 1)); the offline runs are kept: rerun make wandb-sync when it is in reach (WANDB_BASE_URL names another server)"; exit 2; }; \
	echo "syncing $$(echo "$$dirs" | wc -l) offline W&B run(s) under $(RUN)/"; \
	logs=$$(mktemp -d); \
	WANDB_DIR=$$logs timeout -k 10 $(WANDB_SYNC_TIMEOUT) $(WANDB) sync $$dirs; rc=$$?; \
	if [ $$rc = 124 ]; then echo "error: wandb sync did not end within WANDB_SYNC_TIMEOUT=$(WANDB_SYNC_TIMEOUT) s (no network, or the W&B server out of reach?); the offline runs are kept: rerun make wandb-sync later"; fi; \
	if [ $$rc = 0 ]; then rm -rf "$$logs"; else echo "wandb's own logs of this sync: $$logs/wandb/"; fi; \
	exit $$rc

clean: ## remove runs/, wandb/ and caches (keeps .venv)
	rm -rf runs wandb lightning_logs .pytest_cache .ruff_cache
