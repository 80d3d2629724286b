#!/usr/bin/env bash
# Fill .whl/ (git-ignored) with the wheels that benchmarks/gpu_check.sh installs on a GPU machine
# that has torch, numpy, PyYAML, packaging and pytest but no Hydra and no network (the lent H200:
# Python 3.12, see the device notes). Run it HERE, on a machine with a package index, from the
# repository root:   bash benchmarks/gpu_wheels.sh [PYTHON]
#
# Part (c) of gpu_check.sh (a real `specsweep-train` run) and the trainer test of part (d)
# need these: hydra-core, omegaconf, antlr4-python3-runtime, plus submitit and
# hydra-submitit-launcher (imported by our launcher plugin when Hydra scans its plugins: without
# them every run warns), all pure Python, < 1 MB together. Parts (a), (b) and the other tests of
# (d) need torch + numpy (+ pytest) only. W&B is not carried (20+ MB with its dependencies): the
# check logs with logger=none. Everything else the project imports is on that machine already
# (PyYAML, packaging, cloudpickle, typing-extensions, pandas, scipy, matplotlib, tqdm).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-${PYTHON:-python3}}
DEST=.whl
# The versions pyproject.toml asks for (omegaconf 2.3.x needs the antlr4 runtime 4.9.*).
PINNED=(hydra-core==1.3.8 "omegaconf>=2.3,<2.4" "submitit>=1.5.4" hydra-submitit-launcher==1.2.0)
ANTLR=antlr4-python3-runtime==4.9.3
mkdir -p "$DEST"
# The device's pip must see exactly one version of each package: start from an empty folder.
rm -f "$DEST"/hydra_core-*.whl "$DEST"/omegaconf-*.whl "$DEST"/antlr4_python3_runtime-*.whl \
      "$DEST"/submitit-*.whl "$DEST"/hydra_submitit_launcher-*.whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$DEST" "${PINNED[@]}"
# antlr4-python3-runtime 4.9.3 is published as a source archive only: build its (pure Python,
# py3-none-any) wheel here; `pip wheel` uses the local build cache when it has one.
"$PY" -m pip wheel -q --no-deps -w "$DEST" "$ANTLR"
ls -l "$DEST"
total=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
echo "total $(( total / 1024 )) KiB in $DEST (the run tool carries at most 64 MiB with the working tree)"
