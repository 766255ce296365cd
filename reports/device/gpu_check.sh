#!/usr/bin/env bash
# The whole GPU check in one device call, under 9 minutes (G4C_DEADLINE, default 500 s, inside
# a 540 s timeout), always ending with its table:
#   1. the matvec sweep (reports/device/matvec_sweep.py): every variant checked against the
#      float64 oracle, then GB/s on the 12b shapes beside the read-only ceiling;
#   2. conformance-cuda with the 12b goldens (G4C_REAL_DIMS=1);
#   3. the throughput benchmarks of cuda on the 12b preset (pp512, tg128 with per-step times,
#      batched N = 1, 4, 16; each checks what it timed);
#   4. llama-bench on the same file, from binaries built here and carried in .llamacpp/bin
#      (none carried: said, and the committed reports/data/llamacpp-bench-12b-h100.json is the
#      comparison: the fixture is deterministic, its sha256 is in fixtures/golden/12b-q4_0.json);
#   5. conformance-vulkan on the NVIDIA driver where a Vulkan ICD for it is present.
# JSON into $OUT.
#   usage: G4C_COMMIT=<commit> G4C_DIRTY=0|1 bash reports/device/gpu_check.sh   (carry [".whl", ".llamacpp"])
# G4C_GPU_CHECK_EMU=1 runs the same steps here, without a GPU, as the script's own dry run: the
# sweep on the emulator (--emu), two conformance tests and the benchmarks on cuda-emu at the
# tiny preset, no 12b fixture.
EMU=${G4C_GPU_CHECK_EMU:-0}
set -uo pipefail
: "${G4C_COMMIT:?run as G4C_COMMIT=<commit> G4C_DIRTY=0|1 bash $0}"
: "${OUT:=/tmp/out}"
export OUT
mkdir -p "$OUT"
DEADLINE=$(( SECONDS + ${G4C_DEADLINE:-500} ))
left() { local s=$(( DEADLINE - SECONDS - 15 )); echo $(( s > 5 ? s : 5 )); }  # 15 s kept for the table
cap() { local l; l=$(left); echo $(( $1 < l ? $1 : l )); }
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 G4C_CACHE=${G4C_CACHE:-/tmp/g4c} G4C_MACHINE=${G4C_MACHINE:-gpu}
python3 -c "import g4c.runtimes.cuda" 2>/dev/null \
  || python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >/dev/null 2>&1 || { echo "editable install failed"; exit 1; }
if [ "$EMU" = 1 ]; then
  RT=cuda-emu MODEL_SPEC=tiny REAL=0 SWEEP=(--emu) CONF=(--case test_dense_logits --case test_batched_decode_equals_single)
  BENCH=(--bench-pp 32 --bench-tg 8 --bench-rounds 1 -k "test_pp or test_tg[")  # batched decode: minutes emulated
  echo "dry run on the CUDA emulator: no GPU figure"
else
  RT=cuda MODEL_SPEC=12b REAL=1 SWEEP=() CONF=() BENCH=(--bench-pp 512 --bench-tg 128 -k "test_pp or test_tg[ or batched")
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader | tee "$OUT/gpu.txt"
fi
# the benchmarks' fixture (12b: about 7 GB) written while the sweep runs
( python3 -c "from g4c import fixtures; print(fixtures.ensure('$MODEL_SPEC'))" > /tmp/model_path 2> "$OUT/fixture.log" ) &
FIXTURE=$!

# (the runtime's module takes about 30 s to compile on a fresh machine: CuPy's cache starts empty)
timeout -s INT -k 10 "$(cap 180)" python3 reports/device/matvec_sweep.py "$OUT" --deadline "$(( $(cap 180) - 15 ))" \
  "${SWEEP[@]}" > "$OUT/matvec-sweep.log" 2>&1
echo "matvec sweep exit $?"
wait $FIXTURE
MODEL=$(cat /tmp/model_path 2>/dev/null)

G4C_REAL_DIMS=$REAL timeout -s INT -k 20 "$(cap 150)" python3 -m pytest conformance --runtime $RT -p no:cacheprovider -q \
  "${CONF[@]}" --results-json "$OUT/conformance-cuda-gpu.json" > "$OUT/conformance-cuda.log" 2>&1
echo "conformance-$RT exit $?"

timeout -s INT -k 20 "$(cap 150)" python3 -m pytest benchmarks/test_throughput.py --benchmark-only -p no:cacheprovider -q \
  --bench-model $MODEL_SPEC --bench-runtime $RT "${BENCH[@]}" \
  --benchmark-json "$OUT/bench-12b-cuda-gpu.json" > "$OUT/bench-cuda.log" 2>&1
echo "benchmarks exit $?"

if [ -x .llamacpp/bin/llama-bench ] && [ -n "$MODEL" ]; then
  LD_LIBRARY_PATH=.llamacpp/bin:${LD_LIBRARY_PATH:-} timeout -k 5 "$(cap 60)" .llamacpp/bin/llama-bench -m "$MODEL" -ngl 99 \
    -p 512 -n 128 -r 3 -o json > "$OUT/llamacpp-bench-12b-gpu.json" 2> "$OUT/llamacpp-bench.err"
  echo "llama-bench exit $?"
else
  echo "llama-bench: no binaries carried in .llamacpp/bin: compare with reports/data/llamacpp-bench-12b-h100.json"
fi

if [ "$EMU" = 0 ] && python3 -c "from g4c.runtimes.vulkan.runtime import VulkanRuntime as R; a = R().availability(); exit(0 if a.ok else 1)" 2>/dev/null \
   && [ "$(left)" -gt 60 ]; then
  timeout -s INT -k 20 "$(left)" python3 -m pytest conformance --runtime vulkan -p no:cacheprovider -q \
    --results-json "$OUT/conformance-vulkan-gpu.json" > "$OUT/conformance-vulkan.log" 2>&1
  echo "conformance-vulkan exit $?"
else
  echo "conformance-vulkan: no Vulkan device, or under a minute left"
fi
python3 -m g4c.provenance > "$OUT/gpu-check.provenance.json" 2>/dev/null

python3 - <<'PY'
import json, os
out = os.environ["OUT"]
def load(name):
    try:
        return json.load(open(os.path.join(out, name)))
    except Exception as e:
        print(f"{name}: unreadable ({e})")
for name in ("conformance-cuda-gpu.json", "conformance-vulkan-gpu.json"):
    doc = load(name) if os.path.exists(os.path.join(out, name)) else None
    if doc:
        print(f"{name}: {doc.get('counts')} interrupted: {doc.get('interrupted')}")
doc = load("bench-12b-cuda-gpu.json")
for b in (doc or {}).get("benchmarks", []):
    x = b.get("extra_info", {})
    steps = x.get("step_ms") or [[]]
    spike = f"  step max {max(steps[0]):.2f} ms, median {sorted(steps[0])[len(steps[0]) // 2]:.2f} ms" if steps[0] else ""
    print(f"{b['name']:44s} {x.get('tok_s', float('nan')):9.1f} tok/s{spike}")
ll = load("llamacpp-bench-12b-gpu.json") if os.path.exists(os.path.join(out, "llamacpp-bench-12b-gpu.json")) else None
for r in ll or []:
    print(f"llama.cpp pp{r['n_prompt']} tg{r['n_gen']}: {r['avg_ts']:.1f} tok/s")
PY
tail -n 40 "$OUT/matvec-sweep.log"
