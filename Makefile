# fgexp: every command of the suite. `make help` lists them.
# The first target that needs Python makes .venv and installs the pinned, tested set.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
RESULTS ?= results
FIGURES ?= paper_figures
SCRATCH ?= scratch
RANKS  ?= 2
TASK   ?=
PYTEST_ARGS ?=
# One torch thread is faster and steadier than two on small CPU machines; override freely.
export OMP_NUM_THREADS ?= 1
export MPLBACKEND ?= Agg

.PHONY: help install test test-all smoke plots figure-3 figure-4 figure-5 figure-6 table-c \
        table-networks lr-search lrs-closed-form lrs-fc-cpu lrs-resnet-vit-cpu \
        lrs-resnet-vit-cpu-held-stats \
        lr-rules slurm-lr-search slurm-test bench bench-quick bench-nn clean-scratch

help: ## list the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $(STAMP)

install: $(STAMP) ## make .venv and install the pinned dependency set (requirements.lock)

test: $(STAMP) ## the default test suite (what CI runs)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-all: $(STAMP) ## every test, the slow ones included
	$(PY) -m pytest $(PYTEST_ARGS)

smoke: $(STAMP) ## every experiment with its smoke preset, into $(SCRATCH)/smoke
	rm -rf $(SCRATCH)/smoke
	$(PY) experiments/approximation_quality.py --preset smoke --out $(SCRATCH)/smoke
	$(PY) experiments/approximation_quality.py --preset smoke --cone --out $(SCRATCH)/smoke
	$(PY) experiments/closed_form.py --preset smoke --out $(SCRATCH)/smoke
	$(PY) experiments/closed_form.py --preset smoke --cone --out $(SCRATCH)/smoke
	$(PY) experiments/fc_mnist.py --preset smoke --out $(SCRATCH)/smoke
	$(PY) experiments/resnet_vit.py --preset smoke --out $(SCRATCH)/smoke
	$(PY) experiments/resnet_vit.py --preset smoke --models resnet18 --activity-tangents held-stats --out $(SCRATCH)/smoke/resnet_vit_held_stats
	$(PY) experiments/local_guesses.py --preset smoke --out $(SCRATCH)/smoke
	$(PY) experiments/local_mixer.py --preset smoke --out $(SCRATCH)/smoke
	$(PY) experiments/plot.py all --results $(SCRATCH)/smoke --figures $(SCRATCH)/smoke/figures --allow-missing

plots: $(STAMP) ## replot every figure and table from the committed CSVs (no compute)
	$(PY) experiments/plot.py all --results $(RESULTS) --figures $(FIGURES) --allow-missing

$(RESULTS)/approximation_quality.csv: | $(STAMP)
	$(PY) experiments/approximation_quality.py --preset paper --out $(RESULTS)
	$(PY) experiments/approximation_quality.py --preset paper --cone --out $(RESULTS)

figure-3: $(RESULTS)/approximation_quality.csv ## Figures 3 and 5a (runs the paper preset if its CSV is missing)
	$(PY) experiments/plot.py figure3 --results $(RESULTS) --figures $(FIGURES)
	$(PY) experiments/plot.py figure5a --results $(RESULTS) --figures $(FIGURES)

$(RESULTS)/closed_form.csv: | $(STAMP)
	$(PY) experiments/closed_form.py --preset paper --out $(RESULTS)
	$(PY) experiments/closed_form.py --preset paper --cone --out $(RESULTS)

figure-4: $(RESULTS)/closed_form.csv ## Figure 4 (closed-form functions)
	$(PY) experiments/plot.py figure4 --results $(RESULTS) --figures $(FIGURES)

figure-5: $(RESULTS)/approximation_quality.csv $(RESULTS)/closed_form.csv ## Figure 5a and 5b (cone tangents)
	$(PY) experiments/plot.py figure5 --results $(RESULTS) --figures $(FIGURES)

table-c: $(RESULTS)/closed_form.csv ## Appendix C table (Rosenbrock per seed)
	$(PY) experiments/plot.py table-c --results $(RESULTS) --figures $(FIGURES)

$(RESULTS)/fc_mnist.csv: | $(STAMP)
	$(PY) experiments/fc_mnist.py --preset cpu --out $(RESULTS)

$(RESULTS)/resnet_vit.csv: | $(STAMP)
	$(PY) experiments/resnet_vit.py --preset cpu --out $(RESULTS)

figure-6: $(RESULTS)/fc_mnist.csv ## Figure 6 (FC networks on MNIST)
	$(PY) experiments/plot.py figure6 --results $(RESULTS) --figures $(FIGURES)

table-networks: $(RESULTS)/resnet_vit.csv ## ResNet18/ViT table (with $(RESULTS)/resnet_vit_held_stats/ where run)
	$(PY) experiments/plot.py table-networks --results $(RESULTS) --figures $(FIGURES)

# ResNet18 with held batch statistics, the best estimator forward mode computes in one pass per
# tangent (docs/resnet_vit.md): its own run directory and LR table (make
# lrs-resnet-vit-cpu-held-stats), the 7 forward gradients (bp is the cpu preset's).
HELD_STATS_GRADIENTS := fg-mean:1,fg-mean:2,fg-mean:4,fg-mean:16,frog:2,frog:4,frog:16
.PHONY: resnet-vit-held-stats
resnet-vit-held-stats: $(STAMP) ## ResNet18 held-stats rows of the cpu preset (results/resnet_vit_held_stats)
	$(PY) experiments/resnet_vit.py --preset cpu --models resnet18 --activity-tangents held-stats \
	    --gradients $(HELD_STATS_GRADIENTS) --lr-table $(RESULTS)/lrs/held_stats/resnet_vit.csv \
	    --out $(RESULTS)/resnet_vit_held_stats $(ARGS)

# Guessed tangents from local losses (docs/local_guesses.md); the cpu preset takes ~30 min.
.PHONY: figure-guesses
$(RESULTS)/local_guesses.csv: | $(STAMP)
	$(PY) experiments/local_guesses.py --preset cpu --out $(RESULTS)

figure-guesses: $(RESULTS)/local_guesses.csv ## guessed tangents: error vs k, mean vs projection, cosines
	$(PY) experiments/plot.py local-guesses --results $(RESULTS) --figures $(FIGURES)

.PHONY: guesses-lr-check
guesses-lr-check: $(STAMP) ## guessed tangents at lower and higher rates (~7 min), and its table
	$(PY) experiments/local_guesses.py --preset cpu-lr-low --out $(RESULTS)/local_guesses_lr/low
	$(PY) experiments/local_guesses.py --preset cpu-lr-high --out $(RESULTS)/local_guesses_lr/high
	$(PY) experiments/plot.py local-guesses-lr --results $(RESULTS) --figures $(FIGURES)

# Ren et al.'s LocalMixer and local greedy losses (docs/local_losses.md); cpu preset ~30 min.
.PHONY: table-local-mixer
$(RESULTS)/local_mixer.csv: | $(STAMP)
	$(PY) experiments/local_mixer.py --preset cpu --out $(RESULTS)

table-local-mixer: $(RESULTS)/local_mixer.csv ## LocalMixer table beside Ren et al.'s Table 3
	$(PY) experiments/plot.py table-local-mixer --results $(RESULTS) --figures $(FIGURES)

lr-search: $(STAMP) ## Propulate LR search over MPI: make lr-search TASK=... RANKS=2
	@test -n "$(TASK)" || { echo "usage: make lr-search TASK=<task> [RANKS=2]; list tasks: $(PY) experiments/lr_search.py --list-tasks"; exit 2; }
	$(VENV)/bin/mpirun -n $(RANKS) $(PY) experiments/lr_search.py --backend propulate --task $(TASK) --ranks $(RANKS) $(ARGS)

# LR rules validated against every LR table and the authors' published rates (docs/lr_rules.md).
PAPER_LRS ?= ../shared/reference/paper_lrs
# The outcome run (Figure 4 with the rule's rates, ~11 min on 2 cores) skips its finished cells.
lr-rules: $(STAMP) ## results/lr_rules/: rules vs searched rates, Figure 4 rerun with rule rates, figures
	$(PY) experiments/lr_rules.py --lr-dir $(RESULTS)/lrs --paper-lrs $(PAPER_LRS) --out $(RESULTS)/lr_rules
	$(PY) experiments/closed_form.py --preset paper --lr-table $(RESULTS)/lr_rules/closed_form_isotropic.csv --out $(RESULTS)/lr_rules/figure4_isotropic --no-progress
	$(PY) experiments/plot.py lr-rules --results $(RESULTS) --figures $(FIGURES)
	$(PY) experiments/plot.py lr-rules-outcome --results $(RESULTS) --figures $(FIGURES)

# The committed LR tables, each rebuilt by its recipe (fgexp/lr/recipes.py; see what one searches
# with `$(PY) experiments/lr_search.py --recipe NAME --list-settings`). ARGS narrows, e.g.
# ARGS='--select n=4 --lr-dir scratch/lrs'.
lrs-closed-form: $(STAMP) ## LR table closed_form.csv (Figures 4, 5b; hours on a CPU)
	$(PY) experiments/lr_search.py --recipe closed-form --lr-dir $(RESULTS)/lrs $(ARGS)

lrs-fc-cpu: $(STAMP) ## LR table fc_mnist.csv of the FC cpu preset (full horizon: width 256 18 min, width 1024 about 1.5 h on one core)
	$(PY) experiments/lr_search.py --recipe fc-cpu --lr-dir $(RESULTS)/lrs $(ARGS)

# The authors' published FC rates (Appendix B) in our LR-table schema, a separate table
# (docs/learning_rates.md): experiments/fc_mnist.py --preset paper --lr-table $(RESULTS)/lrs/paper/fc_mnist.csv
.PHONY: lrs-paper-fc
lrs-paper-fc: $(STAMP) ## results/lrs/paper/fc_mnist.csv from $(PAPER_LRS)/fc_nns.csv
	$(PY) -c "from fgexp.lr.networks import write_paper_table as w; print(w('$(PAPER_LRS)/fc_nns.csv', '$(RESULTS)/lrs/paper'))"

lrs-resnet-vit-cpu: $(STAMP) ## LR table resnet_vit.csv of the ResNet18/ViT cpu preset
	$(PY) experiments/lr_search.py --recipe resnet-vit-cpu --lr-dir $(RESULTS)/lrs $(ARGS)

lrs-resnet-vit-cpu-held-stats: $(STAMP) ## LR table held_stats/resnet_vit.csv (ResNet18, held-stats)
	$(PY) experiments/lr_search.py --recipe resnet-vit-cpu-held-stats --lr-dir $(RESULTS)/lrs $(ARGS)

slurm-lr-search: $(STAMP) ## write the settings list for TASK and submit the SLURM job array
	@test -n "$(TASK)" || { echo "usage: make slurm-lr-search TASK=<task>"; exit 2; }
	bash slurm/submit_lr_search.sh $(TASK) $(ARGS)

slurm-test: $(STAMP) ## opt-in: submit the array job to a local single-node SLURM
	$(PY) -m pytest -m slurm tests/test_slurm.py

bench: $(STAMP) ## full benchmark report into $(RESULTS)/benchmarks
	$(PY) benchmarks/run.py --out $(RESULTS)/benchmarks --figures $(FIGURES)

bench-quick: $(STAMP) ## spot-check benchmarks (under 2 minutes), into $(SCRATCH)/bench
	$(PY) benchmarks/run.py --quick --out $(SCRATCH)/bench --figures $(SCRATCH)/bench

bench-nn: $(STAMP) ## network step benchmark only
	$(PY) benchmarks/run.py --only nn_steps --out $(RESULTS)/benchmarks --figures $(FIGURES)

.PHONY: bench-projection
bench-projection: $(STAMP) ## the projection, the tangent draw and FC-1024's steps (docs/benchmarks.md; ~5 min)
	$(PY) benchmarks/run.py --only draw --out $(RESULTS)/benchmarks --figures $(FIGURES)
	$(PY) benchmarks/run.py --only approximation --out $(RESULTS)/benchmarks --figures $(FIGURES)
	$(PY) benchmarks/run.py --only nn_steps --case fc --out $(RESULTS)/benchmarks --figures $(FIGURES)

.PHONY: bench-nn-batched
bench-nn-batched: $(STAMP) ## batched FC runs vs one after another (docs/networks.md; ~5 min)
	$(PY) benchmarks/run.py --only nn_batched --out $(RESULTS)/benchmarks --figures $(FIGURES)

# The GPU check (docs/benchmarks.md, "GPU check"): any Python with torch >= 2.4, no install step,
# the repository on PYTHONPATH. PYTHON given on the command line or in the environment is used
# as it is (PYTHON=python3 make device-check); otherwise .venv's Python where there is one.
DEVICE_PY = $(if $(filter environment command,$(origin PYTHON)),$(PYTHON),$(if $(wildcard $(PY)),$(PY),$(PYTHON)))
.PHONY: device-check
device-check: ## GPU check, under 8 min: CUDA correctness, step cost and memory, mnist5k runs
	PYTHONPATH=$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH} $(DEVICE_PY) benchmarks/device_check.py --out $(RESULTS)/benchmarks $(ARGS)

clean-scratch: ## remove scratch outputs
	rm -rf $(SCRATCH)
