#!/usr/bin/env bash
# On a networked machine: fill .jupyter-wheels/ (git-ignored, ~19 MB) with the notebook stack for
# the GPU machine (Python 3.12, x86_64, no internet), so the notebooks can run there.
# It does not fit beside the flash-attn-4 wheels (~59 of the 64 MiB a device call carries), so:
#   call 1 (carry .jupyter-wheels): bash scripts/device_check.sh ""     # installs them, runs doctor
#   call 2, within ~30 s while the machine is warm (carry .wheels):
#           bash scripts/device_check.sh notebooks
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=.jupyter-wheels; mkdir -p "$DEST"
python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform any -d "$DEST" nbclient nbformat ipykernel ipywidgets
du -sh "$DEST"
