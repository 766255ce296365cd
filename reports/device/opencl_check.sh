#!/usr/bin/env bash
# On the GPU machine: the opencl runtime on NVIDIA's OpenCL driver. Installs the carried
# wheels (pyopencl and its needs, Python 3.12: see the device README), points pyopencl's ICD
# loader at libnvidia-opencl where no ICD file names it, then runs the opencl conformance
# suite and the throughput benchmarks of opencl beside cuda (G4C_BENCH_RUNTIMES) on the tiny
# preset (12b with G4C_OPENCL_12B=1). Results land in $OUT; a short table is printed last. Stops itself
# after G4C_DEADLINE seconds (default 420) so that it always reports.
#   usage: G4C_COMMIT=<commit> G4C_DIRTY=0|1 bash reports/device/opencl_check.sh
# Prepare here first: pip download --no-deps --only-binary=:all: --python-version 3.12
#   --platform manylinux_2_28_x86_64 -d .whl pyopencl pytools platformdirs siphash24 gguf
# (the device README's full command), then run with carry [".whl"].
set -uo pipefail
: "${G4C_COMMIT:?run as G4C_COMMIT=<commit> G4C_DIRTY=0|1 bash $0}"
: "${OUT:=/tmp/out}"
export OUT
mkdir -p "$OUT"
DEADLINE=$(( SECONDS + ${G4C_DEADLINE:-420} ))
left() { local s=$(( DEADLINE - SECONDS - 10 )); echo $(( s > 5 ? s : 5 )); }  # 10 s kept for the summary; timeout 0 would mean none
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 G4C_CACHE=${G4C_CACHE:-/tmp/g4c} G4C_MACHINE=${G4C_MACHINE:-gpu}
python3 -c "import g4c.runtimes.opencl" 2>/dev/null \
  || python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >/dev/null 2>&1 || { echo "editable install failed"; exit 1; }
# NVIDIA's OpenCL library, named in an ICD file of our own when the system has none for it
if ! grep -qs nvidia /etc/OpenCL/vendors/*.icd; then
  lib=$(ldconfig -p | awk '/libnvidia-opencl.so.1/ && /x86-64/ {print $NF; exit}')
  [ -z "$lib" ] && lib=$(ls /usr/local/nvidia/lib64/libnvidia-opencl.so.1 /usr/lib/x86_64-linux-gnu/libnvidia-opencl.so.1 2>/dev/null | head -1)
  if [ -n "$lib" ]; then
    mkdir -p /tmp/icd && echo "$lib" > /tmp/icd/nvidia.icd && export OCL_ICD_VENDORS=/tmp/icd
  fi
  echo "ICD: ${lib:-no libnvidia-opencl.so.1 found}"
fi
export G4C_OPENCL_DEVICE=${G4C_OPENCL_DEVICE:-NVIDIA}
python3 - <<'PY' | tee "$OUT/opencl-device.txt"
from g4c.runtimes.opencl.runtime import OpenCLRuntime
rt = OpenCLRuntime()
a = rt.availability()
print("opencl:", a.ok, a.reason, rt.settings() if a.ok else "")
PY
# the kernels on both matvec paths (the sub-group one emulated where the driver has none),
# device choice and refusals, then the conformance suite on the device's own path
timeout -s INT -k 20 $(( $(left) / 4 )) python3 -m pytest tests/test_opencl.py -p no:cacheprovider -q > "$OUT/test-opencl.log" 2>&1
echo "tests/test_opencl.py exit $?: $(tail -1 "$OUT/test-opencl.log")"
timeout -s INT -k 20 $(( $(left) * 2 / 3 )) python3 -m pytest conformance --runtime opencl -p no:cacheprovider -q \
  --results-json "$OUT/conformance-opencl-gpu.json" > "$OUT/conformance-opencl.log" 2>&1
echo "conformance exit $?"
BENCH=(--bench-runtime "${G4C_BENCH_RUNTIMES:-opencl,cuda}" --bench-pp 512 --bench-tg 128 -k "test_pp or test_tg[ or batched")
[ "${G4C_OPENCL_12B:-0}" = 1 ] && BENCH+=(--bench-model 12b)
timeout -s INT -k 20 $(left) python3 -m pytest benchmarks/test_throughput.py --benchmark-only -p no:cacheprovider -q "${BENCH[@]}" \
  --benchmark-json "$OUT/bench-opencl-gpu.json" > "$OUT/bench-opencl.log" 2>&1
echo "benchmarks exit $?"
python3 -m g4c.provenance > "$OUT/opencl-gpu.provenance.json" 2>/dev/null
python3 - <<'PY'
import json, os
out = os.environ["OUT"]
try:
    doc = json.load(open(os.path.join(out, "conformance-opencl-gpu.json")))
    print("conformance-opencl:", doc.get("counts"), "interrupted:", doc.get("interrupted"))
except Exception as e:
    print("conformance-opencl: unreadable:", e)
try:
    for b in json.load(open(os.path.join(out, "bench-opencl-gpu.json")))["benchmarks"]:
        x = b.get("extra_info", {})
        print(f"{b['name']:40s} {x.get('tok_s', float('nan')):10.2f} tok/s")
except Exception as e:
    print("benchmarks: unreadable:", e)
PY
