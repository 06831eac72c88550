# make demo: set up .venv and run the whole pipeline (on SYNTHETIC demo flowers in data_set/demo when no real data set is there), then print what to do next
# make test: set up .venv and run the tests (CPU only, no network; requirements-test.txt brings OpenCV for video_predict.py's)
# make test-floor: the same tests in .venv-floor, on the oldest versions requirements.txt allows (CI runs both)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Your data set; the demo trains on it when DATA/flower_photos holds real images, else on SYNTHETIC demo
# flowers in DEMO_DATA, apart from it (the README's workflow then downloads into DATA as if no demo ran).
DATA ?= data_set/flower_data
DEMO_DATA ?= data_set/demo
REAL_DATA := $(and $(wildcard $(DATA)/flower_photos),$(if $(wildcard $(DATA)/flower_photos/SYNTHETIC_DEMO_DATA.txt),,yes))
DEMO_PATH := $(if $(REAL_DATA),$(DATA),$(DEMO_DATA))
DEMO_OUT ?= runs/demo
DEMO_IMGS ?= data/imgs
DEMO_PER_CLASS ?= 120
DEMO_ARGS ?= --model resnet18 --weights none --img-size 64 --epochs 14 --batch-size 32 --opt adamw --lr 2e-3 \
  --weight-decay 0.05 --lr-scheduler cosine --warmup-epochs 1 --label-smoothing 0.1
# The weights carry their model, image size and classes: the other scripts need only --weights.
DEMO_WEIGHTS = $(DEMO_OUT)/resNet18.pth
DATA_FLAG = $(if $(filter data_set/flower_data,$(DEMO_PATH)),,--data-path $(DEMO_PATH))

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
ifneq ($(REAL_DATA),)
	@echo "== real data set found in $(DATA)/flower_photos"
	[ -d $(DATA)/train ] || $(BIN)/python split_data.py --data-path $(DATA)
else
	$(BIN)/python split_data.py --demo --data-path $(DEMO_DATA) --demo-imgs $(DEMO_IMGS) \
	  --demo-per-class $(DEMO_PER_CLASS) --overwrite
endif
	$(BIN)/python train.py --data-path $(DEMO_PATH) $(DEMO_ARGS) --save-path $(DEMO_WEIGHTS) \
	  --class-indices $(DEMO_OUT)/class_indices.json --overwrite
	$(BIN)/python predict.py $(DEMO_IMGS)/daisy.jpg --weights $(DEMO_WEIGHTS) --cam --save-fig $(DEMO_OUT)/predict.png
	$(BIN)/python batch_predict.py $(DEMO_IMGS) --weights $(DEMO_WEIGHTS) --csv $(DEMO_OUT)/predictions.csv
	@echo ""
	@echo "== what now: the demo's model is $(DEMO_WEIGHTS); it carries its classes, model and image size"
	@echo "look at $(DEMO_OUT)/: curves.png, confusion_matrix.png, val_errors.png, predict.png (docs/pictures.md)"
	@echo "predict, evaluate and export with it (or '. $(BIN)/activate', then 'python ...' as in README.md):"
	@echo "  $(BIN)/python predict.py $(DEMO_IMGS)/tulips.jpg --weights $(DEMO_WEIGHTS)"
	@echo "  $(BIN)/python batch_predict.py $(DEMO_IMGS) --weights $(DEMO_WEIGHTS)"
	@echo "  $(BIN)/python evaluate.py --weights $(DEMO_WEIGHTS) $(DATA_FLAG)"
	@echo "export needs onnx and onnxruntime; install them once:"
	@echo "  $(BIN)/pip install onnx onnxruntime"
	@echo "  $(BIN)/python export_onnx.py --weights $(DEMO_WEIGHTS) $(DATA_FLAG)"
	@echo "  $(BIN)/python batch_predict.py $(DEMO_IMGS) --onnx $(DEMO_WEIGHTS:.pth=.onnx)"
	@echo "your own photos: data_set/README.md, then the workflow of README.md"

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
