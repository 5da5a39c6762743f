# Fresh machine: `make demo` (set-up + the main job on the default corpus) or `make test` (set-up + tests).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
ELASTIC ?= $(VENV)/bin/elastic
# CPU-only machines get the CPU build of torch pinned here; setup.cfg keeps a range for GPU users.
TORCH_CPU := torch==2.13.0
RUN    ?= runs/tiny
DATA   ?= data/stdlib

.PHONY: venv test test-fast demo golden bench reproduce loc clean

venv: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then \
	  $(PY) -m pip install -q 'torch>=2.4,<2.15'; \
	else \
	  $(PY) -m pip install -q $(TORCH_CPU); \
	fi
	$(PY) -m pip install -q -e '.[dev,plot,hf,lm-eval,tensorboard,wandb]'
	touch $@

test: venv
	OMP_NUM_THREADS=1 $(PY) -m pytest -q

test-fast: venv
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -m "not slow"

bench: venv
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(PY) -m elastic_cli bench --recipe recipes/tiny.yaml --json runs/bench.json

# Long-range tasks + language modelling for every memory kind, 3 seeds each -> docs/results.md (CPU:
# about 320 core-minutes, ARGS=--plan prints the estimate; ARGS=--smoke for a few minutes, ARGS=--gpu on a GPU).
reproduce: venv
	PYTHON=$(PY) scripts/reproduce.sh $(ARGS)

loc:
	@find elastic_cli -name '*.py' | xargs wc -l | sort -n

# The README's first screen. tests/test_demo.py runs these exact lines on a small corpus and budget
# (DEMO_SOURCES; DEMO_TRAIN overrides, which must then set data.path and run.dir) through `make -n`.
# DATA and RUN are where recipes/tiny.yaml reads its data and writes its run.
DEMO_SOURCES ?= --corpus python-stdlib
DEMO_TRAIN   ?=
demo: venv
	$(ELASTIC) prepare $(DEMO_SOURCES) --tokenizer tokenizers/code-8k.model --out $(DATA)
	$(ELASTIC) train recipes/tiny.yaml --overwrite $(DEMO_TRAIN)
	$(ELASTIC) eval --ckpt $(RUN)
	$(ELASTIC) generate --ckpt $(RUN) --prompt "def main(" --max-new-tokens 64

clean:
	rm -rf $(VENV) runs data build dist *.egg-info
