# Every workflow of the course is a target here; each target installs what it needs first.
#   make run      execute every lab's solution notebook (papermill), check thresholds, write a report
#   make test     the whole test suite (what CI runs)
#   make lab      JupyterLab for students on 127.0.0.1; make validate LAB=... NB=... checks a notebook
#   make release  regenerate labs/ from solutions/ with nbgrader
#   make student-dist  what students receive: build/student-dist/<course>/ and its zip (no solutions)
#   make gpu-run  the GPU runner: labs and lectures on the cuda profile, full sizes (scripts/gpu_runner.sh)
# Variables: PROFILE=auto|cpu|cuda   FULL=1 (full-size parameters; 0 or unset: smoke)   PYTEST_ARGS=...

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
UV_VERSION := 0.13.9
LOCK := requirements/cpu.lock
STAMP := $(VENV)/.installed-$(shell cat $(LOCK) pyproject.toml 2>/dev/null | sha1sum | cut -c1-12)
PROFILE ?= auto
# FULL=1: full-size parameters; unset or FULL=0: smoke sizes; anything else is a mistake, said at once
FULL_FLAG = $(if $(filter 1,$(FULL)),--full,$(if $(filter-out 0,$(FULL)),$(error FULL must be 1 (full sizes) or 0 (smoke sizes), not '$(FULL)')))
PORT ?= 8888
IP ?= 127.0.0.1

# ENV_READY=1: an environment made elsewhere (the conda env of environment.yml, the Docker image)
# is active; use its python and skip the CPU set-up.
ifdef ENV_READY
PY := python
STAMP :=
endif

# torch's CPU wheel: from this machine's local wheel folder when it has one, else PyTorch's CPU index.
WHEEL_DIR ?= /opt/wheels
TORCH_SOURCE := $(if $(wildcard $(WHEEL_DIR)/torch-*.whl),--find-links $(WHEEL_DIR),--extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match)

# Offline and self-contained: caches inside the workspace, no model hub (see optcourse/core/paths.py).
CACHE := $(CURDIR)/.cache
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_HOME := $(CACHE)/huggingface
export VLLM_CACHE_ROOT := $(CACHE)/vllm
export VLLM_NO_USAGE_STATS := 1
export JUPYTER_CONFIG_DIR := $(CACHE)/jupyter/config
export JUPYTER_DATA_DIR := $(CACHE)/jupyter/data
export JUPYTER_RUNTIME_DIR := $(CACHE)/jupyter/runtime
export IPYTHONDIR := $(CACHE)/ipython
export MPLCONFIGDIR := $(CACHE)/matplotlib
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: help gpu-run setup run test test-fast lab validate release student-dist lock formgrader models-digits models-llm quiz-validate quiz-generate quiz-grade quiz-export autograde clean browser-deps

help:  ## list every target with one line each (this list)
	@sed -n '1,7p' Makefile
	@echo "Targets:"
	@grep -E '^[a-z][a-z-]*:.*## ' Makefile | sed -E 's/^([a-z-]+):.*## (.*)$$/  \1\t\2/' | expand -t 18

setup: $(STAMP)  ## build .venv from requirements/cpu.lock (only when the lock or pyproject.toml change)

# The venv is rebuilt only when the lock or pyproject.toml change (the stamp's name hashes both).
# --compile-bytecode: the packages' .pyc are written once here. Without them every Python process (kernel,
# sandboxed grader, vLLM's three server processes) compiles torch, transformers and vllm from source again
# wherever PYTHONDONTWRITEBYTECODE is set or site-packages is read-only (the sandbox): importing vLLM's server
# took 21 s instead of 9.5 s on 2 cores.
$(STAMP):
	@start=$$(date +%s); \
	test -x $(PY) || $(PYTHON) -m venv $(VENV); \
	test -x $(UV) || $(PY) -m pip install -q --disable-pip-version-check uv==$(UV_VERSION); \
	$(UV) pip sync --python $(PY) --quiet --compile-bytecode $(TORCH_SOURCE) $(LOCK) && \
	$(UV) pip install --python $(PY) --quiet --no-deps -e . && \
	rm -f $(VENV)/.installed-* && touch $@ && \
	echo "environment ready in $$(( $$(date +%s) - start )) s ($(VENV), $(LOCK))"

run: setup  ## execute every lab's solution notebook (papermill), check thresholds, write a report [PROFILE= FULL=1 INCLUDE=]
	$(PY) -m optcourse.course.runner --profile $(PROFILE) $(FULL_FLAG) $(if $(INCLUDE),--include $(INCLUDE))

test: setup  ## the whole test suite, what CI runs [PYTEST_ARGS=]
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup  ## the tests without notebook executions, servers and slow parts
	$(PY) -m pytest -m "not notebooks and not server and not slow" $(PYTEST_ARGS)

# Debian's chromium for the browser test (tests/test_browser.py drives it with Playwright); CI runs this.
browser-deps:  ## install Debian's chromium for the browser test (as root)
	@if command -v chromium >/dev/null 2>&1; then echo "chromium: $$(command -v chromium) ($$(chromium --version 2>/dev/null))"; \
	elif [ "$$(id -u)" != 0 ]; then echo "browser-deps: chromium is not installed; as root run: apt-get update && apt-get install -y --no-install-recommends chromium" >&2; exit 1; \
	else start=$$(date +%s); \
	  DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium && \
	  echo "chromium installed in $$(( $$(date +%s) - start )) s: $$(chromium --version 2>/dev/null)"; fi

# Students' JupyterLab at the course root (labs/ and lectures/ both reachable). jupyter-config/ turns the
# instructor extensions off and gives Validate the course's nbgrader config (its cell timeout);
# --allow-root where it runs as root (a container).
lab: setup  ## JupyterLab for students at the course root on 127.0.0.1 [PORT=]
	@token=$$($(PY) -c "import secrets; print(secrets.token_hex(16))"); \
	echo "JupyterLab: http://127.0.0.1:$(PORT)/lab?token=$$token"; \
	JUPYTER_CONFIG_PATH=$(CURDIR)/jupyter-config $(PY) -m jupyterlab --ip $(IP) --port $(PORT) --no-browser \
	  --ServerApp.token=$$token --ServerApp.root_dir=$(CURDIR) $(if $(filter 0,$(shell id -u)),--allow-root)

# Check a lab notebook before submitting: runs it and its visible tests with the grader's rules.
#   make validate LAB=lab02_quantization [NB=labs/lab02_quantization/lab02_quantization.ipynb]
validate: setup  ## check a lab notebook with the grader's rules before submitting: LAB=... [NB=...]
	@test -n "$(LAB)$(NB)" || { echo "usage: make validate LAB=<lab> [NB=<your notebook>]"; exit 2; }
	$(PY) -m optcourse.course.validate $(or $(NB),labs/$(LAB)/$(LAB).ipynb)

# On an NVIDIA machine: the full stack (environment.yml, Docker: ENV_READY=1) or only PyTorch plus
# WHEELS=<folder from scripts/gpu_wheels.sh>; no CPU venv is made. Report: results/gpu/<gpu>/report.md
#   make gpu-run [WHEELS=.whl] [REPORT_DIR=...] [RUN_ARGS="--only lab03 --keep"]
# (The CPU venv is taken off PATH: its torch is the CPU build.)
gpu-run:  ## the GPU runner: labs and lectures on the cuda profile, full sizes [WHEELS= REPORT_DIR= RUN_ARGS=]
	PATH="$(subst $(CURDIR)/$(VENV)/bin:,,$(PATH))" PYTHON=$(if $(ENV_READY),python,$(or $(GPU_PYTHON),python3)) \
	  $(if $(WHEELS),WHEELS=$(WHEELS)) $(if $(REPORT_DIR),REPORT_DIR=$(REPORT_DIR)) scripts/gpu_runner.sh $(RUN_ARGS)

release: setup  ## regenerate labs/ from solutions/ with nbgrader
	$(PY) -m optcourse.course.release

student-dist: setup  ## build what students receive (no solutions, hidden tests or keys) and scan it
	$(PY) -m optcourse.course.student_dist

# Re-resolve both locks (needs the network). vLLM's CPU build must come without torchvision,
# torchaudio and torchcodec, whose PyPI builds pull CUDA. environment.yml repeats gpu.lock's direct pins.
lock: $(UV)  ## re-resolve requirements/cpu.lock and gpu.lock (needs the network)
	$(UV) pip compile requirements/cpu.in --excludes requirements/cpu.excludes $(TORCH_SOURCE) \
	  --python-version 3.11 --python-platform x86_64-manylinux_2_28 --no-emit-find-links --no-emit-index-url -o $(LOCK)
	$(UV) pip compile requirements/gpu.in --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
	  --no-emit-index-url -o requirements/gpu.lock

$(UV):
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q uv==$(UV_VERSION)

# Grade a class: make autograde LAB=lab02_quantization [SUBMISSIONS=autograder/submitted|class.zip] [WORKERS=2]
#   [BACKEND=local|ray] [RAY_ADDRESS=auto] [GPUS_PER_TASK=1]
SUBMISSIONS ?= autograder/submitted
autograde: setup  ## grade a class's submissions in sandboxes: LAB=... [SUBMISSIONS= ROSTER= WORKERS= BACKEND=local|ray]
	@test -n "$(LAB)" || { echo "usage: make autograde LAB=<lab> [SUBMISSIONS=folder-or-zip] [BACKEND=local|ray]"; exit 2; }
	$(PY) -m optcourse.autograde $(LAB) $(SUBMISSIONS) --db sqlite:///$(CURDIR)/autograder/gradebook.db \
	  --autograded-dir $(CURDIR)/autograder/autograded $(if $(WORKERS),--workers $(WORKERS)) \
	  $(if $(ROSTER),--roster $(ROSTER)) $(if $(BACKEND),--backend $(BACKEND)) $(if $(RAY_ADDRESS),--ray-address $(RAY_ADDRESS)) $(if $(GPUS_PER_TASK),--gpus-per-task $(GPUS_PER_TASK))

# nbgrader's formgrader on the course's gradebook (autograder/gradebook.db, which make autograde fills, with the
# executed notebooks in autograder/autograded/): manual grading of written answers, feedback. Its own port and token.
formgrader: setup  ## nbgrader's formgrader on the course gradebook, 127.0.0.1 (manual grading after make autograde) [PORT=]
	@token=$$($(PY) -c "import secrets; print(secrets.token_hex(16))"); \
	echo "formgrader: http://127.0.0.1:$(PORT)/formgrader?token=$$token"; \
	cd autograder && JUPYTER_CONFIG_PATH=$(CURDIR)/autograder/jupyter-config $(PY) -m jupyterlab --ip 127.0.0.1 --port $(PORT) --no-browser --ServerApp.token=$$token \
	  --ServerApp.root_dir=$(CURDIR) $(if $(filter 0,$(shell id -u)),--allow-root)

models-digits: setup  ## retrain the shipped digits ResNet (35 s, deterministic)
	$(PY) -m optcourse.models.digits

# The small Llama: corpus and tokenizer here, training on a GPU (DEVICE=cuda) in a few minutes.
models-llm: setup  ## rebuild the course Llama: corpus, tokenizer, training [DEVICE=cuda]
	$(PY) -m optcourse.models.train_llm corpus
	$(PY) -m optcourse.models.train_llm tokenizer
	$(PY) -m optcourse.models.train_llm train --device $(or $(DEVICE),cuda) --out optcourse/assets/course-llama

quiz-validate: setup  ## check the quiz bank
	$(PY) -m optcourse.quiz validate

SEED ?= 2025
STUDENTS ?= sample
quiz-generate: setup  ## per-student quizzes and answer keys [SEED= STUDENTS= or ROSTER=roster.csv]
	$(PY) -m optcourse.quiz generate --seed $(SEED) $(if $(ROSTER),--roster $(ROSTER),$(foreach s,$(STUDENTS),--student $(s))) --out build/quiz/students --key-dir quiz/keys

# Defaults grade the shipped class sample; set QUIZ_KEYS=quiz/keys RESPONSES=<folder> for a real class.
QUIZ_KEYS ?= quiz/samples/key
RESPONSES ?= quiz/samples/class
quiz-grade: setup  ## grade quiz responses: scores, feedback, item analysis [QUIZ_KEYS= RESPONSES=]
	$(PY) -m optcourse.quiz grade --key $(QUIZ_KEYS) --responses $(RESPONSES) --csv build/quiz/scores.csv \
	  --feedback build/quiz/feedback --item-analysis build/quiz

quiz-export: setup  ## export the bank as Moodle GIFT and Canvas QTI
	$(PY) -m optcourse.quiz export --format gift --out build/quiz/bank.gift
	$(PY) -m optcourse.quiz export --format qti --out build/quiz/bank_qti.zip

clean:  ## remove results/, build/ and .pytest_cache
	rm -rf results build .pytest_cache
