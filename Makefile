# Two commands (README): `make demo` and `make test`. Both set up .venv from scratch when needed.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed
# The real scanner data beside the repository (tests skip what needs it when it is absent).
REALDATA ?= $(abspath ../shared/realdata)
# pytest selection: `make test PYTEST_ARGS="-m 'not slow'"` for a quick run.
PYTEST_ARGS ?=
export PATH := $(BIN):$(PATH)

.PHONY: venv demo paper results shipped-model test bench lint clean-demo help

help:
	@echo "make demo   set up .venv, generate the demo cohort, run the workflow (results/, logs/): < 20 min"
	@echo "make paper  the paper's tables with the full ablation on the 48-subject cohort -> RESULTS.md: about 5.5 hours on 2 cores"
	@echo "make results the learnability ladder of the training recipes on the paper cohort -> RESULTS.md: over 2 hours"
	@echo "make shipped-model  retrain and export the model the demo starts from (paper cohort): an estimated 40 min on 2 cores"
	@echo "make test   set up .venv and run the test suite"
	@echo "make bench  every benchmark, against its baseline in the same run -> BENCHMARKS.md"
	@echo "make lint   snakemake --lint on the demo config"

venv: $(STAMP)

# torch==2.13.0 first: the CPU build (an unpinned torch pulls a multi-GB CUDA build; on GPU nodes
# install the CUDA build that matches the driver before `pip install -e .`).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[preprocess,slurm,test]'
	touch $@

cohort/demo/samples.tsv: $(STAMP)
	thrombus synth --preset demo --out cohort/demo --threads 2

cohort/paper/samples.tsv: $(STAMP)
	thrombus synth --preset paper --out cohort/paper --threads 2

# The whole chain, report included, then the tables and where everything is. $(1): extra snakemake arguments.
define run_chain
	snakemake --profile profiles/local $(1) all
	snakemake --profile profiles/local $(1) --report results/report.html all
	@for table in results/tables/*.md; do case $$table in *_per_center.md) ;; *) echo; cat $$table;; esac; done
	@echo
	@echo "Report (tables, figures, learning curves): $(CURDIR)/results/report.html"
	@echo "Tables (CSV, Markdown, LaTeX), figures:    $(CURDIR)/results/tables/"
	@echo "Models, cards, learning curves:            $(CURDIR)/results/models/<experiment>/fold<k>/"
	@echo "Held-out predictions:                      $(CURDIR)/results/heldout/<experiment>/fold<k>/<subset>/"
	@echo "Model-ready stacks:                        $(CURDIR)/results/harmonise/<center>/<subject>/stack.nii.gz"
	@echo "QC per subject / per center:               $(CURDIR)/results/qc/"
endef

# The demo's scope (config/config.yaml): 16 subjects, one training, under 20 minutes on 2 cores.
demo: $(STAMP) cohort/demo/samples.tsv
	$(call run_chain,)
	@echo "Cohort truth + QC:                         $(CURDIR)/cohort/demo/truth/ and cohort/demo/qc/"

# The paper's tables with the full ablation (config/paper.yaml): 48 subjects, 20 trainings, about 5.5 hours on
# 2 cores (15 minutes a model with its calibration and inference, 25 for the cohort and its preprocessing). It writes into results/ too: `make clean-demo` first when results/ holds the demo's run. The tables
# and the run's provenance are kept in RESULTS.paper.json, and RESULTS.md is re-rendered with them.
paper: $(STAMP) cohort/paper/samples.tsv
	$(call run_chain,--configfile config/paper.yaml)
	thrombus paper-report --root . --config config/config.yaml config/paper.yaml --ran-by "make paper" --store RESULTS.paper.json
	thrombus ladder --config config/ladder.yaml --report-only --results RESULTS.md
	@echo "Cohort truth + QC:                         $(CURDIR)/cohort/paper/truth/ and cohort/paper/qc/"

# The learnability ladder (config/ladder.yaml): each training recipe on the overfit, monocentric and
# leave-one-center-out rungs of the paper cohort's preprocessed stacks, written to RESULTS.md.
results: $(STAMP) cohort/paper/samples.tsv
	snakemake --profile profiles/local --configfile config/paper.yaml -- preprocess
	thrombus ladder --config config/ladder.yaml --threads 2 --results RESULTS.md

# The model the demo starts from (thrombus/data/models/paper_loco_c, config.yaml's train.init_from): make
# paper's loco_gmd model of the fold that never sees center C, trained 1500 iterations (config/shipped.yaml),
# exported with a card that records how it was made and its validation and held-out figures. Estimated 40
# minutes on 2 cores from its parts (not run end to end): the paper cohort (2), its preprocessing (18,
# timed at 3d2b7a0), the training (17, at c6db1b0).
shipped-model: $(STAMP) cohort/paper/samples.tsv
	snakemake --profile profiles/local --configfile config/paper.yaml config/shipped.yaml -- results/models/shipped_loco_c/fold2/best.pt
	thrombus ship --checkpoint results/models/shipped_loco_c/fold2/best.pt --name paper_loco_c --sheet cohort/paper/samples.tsv \
		--stacks-root . --held-out C --config config/config.yaml config/paper.yaml config/shipped.yaml --threads 2 \
		--trained-by "snakemake --configfile config/paper.yaml config/shipped.yaml -- results/models/shipped_loco_c/fold2/best.pt (make shipped-model)"

test: $(STAMP)
	THROMBUS_REALDATA="$${THROMBUS_REALDATA:-$(if $(wildcard $(REALDATA)/MANIFEST.tsv),$(REALDATA),)}" \
		$(BIN)/python -m pytest $(PYTEST_ARGS)

# The per-rule peak memory section reads the benchmark files of the last workflow run, when there is one.
bench: $(STAMP)
	THROMBUS_REALDATA="$${THROMBUS_REALDATA:-$(if $(wildcard $(REALDATA)/MANIFEST.tsv),$(REALDATA),)}" \
		$(BIN)/python benchmarks/run.py $(if $(wildcard logs/benchmarks),--rule-benchmarks logs/benchmarks,) $(BENCH_ARGS)

lint: $(STAMP) cohort/demo/samples.tsv
	snakemake --lint

clean-demo:
	rm -rf cohort/demo cohort/paper results logs .snakemake
