#!/usr/bin/env bash
# Run on the GPU machine (the device tool): install the carried gguf wheel and this repo
# without network, then the CUDA conformance suite; results land in $OUT.
#   usage: G4C_COMMIT=<commit> G4C_DIRTY=0|1 bash reports/device/cuda_check.sh [pytest args...]
set -uo pipefail
# the copy of the tree here is no git checkout: the caller says which commit it is, for the results
: "${G4C_COMMIT:?run as G4C_COMMIT=<commit> G4C_DIRTY=0|1 bash $0}"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 G4C_CACHE=/tmp/g4c
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >/dev/null 2>&1 || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -m g4c.cli runtimes
python3 -m pytest conformance --runtime cuda -p no:cacheprovider --results-json "$OUT/conformance-cuda.json" "$@" 2>&1 | tee "$OUT/conformance-cuda.log" | tail -60
