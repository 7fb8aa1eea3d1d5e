# Two commands on a fresh machine:  make demo   |   make test
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# A CPU build of torch when none is importable (pip on the course machines finds it on disk;
# elsewhere it is a normal PyPI download). Override on a GPU box: make demo TORCH_SPEC=torch
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test install install-test notebooks lab labs grade device-check clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

install: $(PY)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e .

install-test: install
	$(PY) -m pip install -q -e ".[test]"

demo: install
	$(PY) -m workbench demo

test: install-test
	$(PY) -m pytest -q

notebooks: install
	$(PY) -m pip install -q -e ".[notebook]"

lab: notebooks
	$(VENV)/bin/jupyter lab notebooks/

# Course labs (otter-grader): student versions of labs/*.ipynb, solutions stripped -> build/labs/*/student/
LABS_OUT ?= build/labs
labs: install
	$(PY) -m pip install -q -e ".[lab]"
	$(PY) scripts/labs.py build --out "$(LABS_OUT)"

# Grade a folder of submitted notebooks (alice/lab03_attention.ipynb ...) with the autograders under
# $(LABS_OUT) -> $(GRADES_OUT)/grades.csv and $(GRADES_OUT)/feedback/ (a folder of its own, if you like)
GRADES_OUT ?= $(LABS_OUT)
grade:
	@test -n "$(SUBMISSIONS)" || { echo "usage: make grade SUBMISSIONS=dir [LABS_OUT=build/labs] [GRADES_OUT=dir]"; exit 2; }
	$(PY) scripts/labs.py grade "$(SUBMISSIONS)" --out "$(LABS_OUT)" --table "$(GRADES_OUT)/grades.csv"

# On the GPU device (see README, contributors): install carried wheels, run GPU tests + checks.
device-check:
	bash scripts/device_check.sh

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
