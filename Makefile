# make demo: set up .venv and run the whole pipeline (on SYNTHETIC demo flowers when no real data set is there)
# make test: set up .venv and run the tests (CPU only, no network; requirements-test.txt brings OpenCV for video_predict.py's)
# make test-floor: the same tests in .venv-floor, on the oldest versions requirements.txt allows (CI runs both)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= data_set/flower_data
DEMO_OUT ?= runs/demo
DEMO_ARGS ?= --model resnet18 --weights none --img-size 96 --epochs 8 --batch-size 32 --opt adamw --lr 2e-3 \
  --weight-decay 0.05 --lr-scheduler cosine --warmup-epochs 1 --label-smoothing 0.1
MODEL_ARGS = --model resnet18 --img-size 96 --weights $(DEMO_OUT)/resNet18.pth --class-indices $(DEMO_OUT)/class_indices.json

# Python 3.8 (JetPack 5's) for the floor when this machine has one, else the default python3.
# (pyenv's shims answer `command -v` for versions they will not run: each candidate is tried for real.)
FLOOR_PYTHON ?= $(shell for p in $(HOME)/.pyenv/versions/3.8*/bin/python3.8 python3.8; do \
  $$p -c 'import sys; assert sys.version_info[:2] == (3, 8)' >/dev/null 2>&1 && { echo $$p; break; }; done)
FLOOR_VENV ?= .venv-floor

.PHONY: demo test test-floor venv clean-demo

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.run-deps: requirements.txt | $(BIN)/python
	$(BIN)/python -m pip install -r requirements.txt
	touch $@

$(VENV)/.test-deps: requirements-test.txt requirements-video.txt $(VENV)/.run-deps
	$(BIN)/python -m pip install -r requirements-test.txt
	touch $@

venv: $(VENV)/.run-deps

demo: $(VENV)/.run-deps
	@if [ -d $(DATA)/flower_photos ] && [ ! -f $(DATA)/flower_photos/SYNTHETIC_DEMO_DATA.txt ]; then \
	  echo "== real data set found in $(DATA)/flower_photos"; \
	  [ -d $(DATA)/train ] || $(BIN)/python split_data.py --data-path $(DATA); \
	else \
	  $(BIN)/python split_data.py --demo --data-path $(DATA) --overwrite; \
	fi
	$(BIN)/python train.py --data-path $(DATA) $(DEMO_ARGS) --save-path $(DEMO_OUT)/resNet18.pth \
	  --class-indices $(DEMO_OUT)/class_indices.json --overwrite
	$(BIN)/python predict.py data/imgs/daisy.jpg $(MODEL_ARGS) --cam --save-fig $(DEMO_OUT)/predict.png
	$(BIN)/python batch_predict.py data/imgs $(MODEL_ARGS) --csv $(DEMO_OUT)/predictions.csv

# Only the temporary folders of failed tests are kept: pytest keeps every test's, of its last 3 sessions
# (6 GB a session here, mostly the tiny runs' checkpoints), which fills a small disk. The 15 slowest
# tests are named at the end of every run, so that a slow new test is seen at once.
# TEST_WORKERS test processes (pytest-xdist); each takes its share of the cores.
TEST_WORKERS ?= 2
PYTEST_ARGS ?= -q -o tmp_path_retention_policy=failed --durations=15 -n $(TEST_WORKERS)

test: $(VENV)/.test-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS) tests

$(FLOOR_VENV)/.deps: requirements-floor.txt requirements-test.txt requirements-video.txt requirements.txt
	@echo "== floor: $(or $(FLOOR_PYTHON),python3 (no Python 3.8 here)) with $$(grep -E '^torch' requirements-floor.txt | tr '\n' ' ')"
	$(or $(FLOOR_PYTHON),$(PYTHON)) -m venv $(FLOOR_VENV)
	$(FLOOR_VENV)/bin/python -m pip install -r requirements-floor.txt
	touch $@

test-floor: $(FLOOR_VENV)/.deps
	$(FLOOR_VENV)/bin/python -m pytest $(PYTEST_ARGS) tests

clean-demo:
	rm -rf $(DEMO_OUT)
