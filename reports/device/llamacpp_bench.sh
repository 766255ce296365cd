#!/usr/bin/env bash
# On the GPU machine: build llama.cpp's CUDA backend from the sources vendored by the
# llama-cpp-python 0.3.36 sdist (llama.cpp 0c1e57098; carried in .llamacpp/, trimmed of
# models, docs, tests and examples) and run llama-bench on the same 12b preset file the
# CUDA runtime is measured on, so the ratio is fair. Results land in $OUT.
set -uo pipefail
# the copy of the tree here is no git checkout: the caller says which commit it is, for the results
: "${G4C_COMMIT:?run as G4C_COMMIT=<commit> G4C_DIRTY=0|1 bash $0}"
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 G4C_CACHE=/tmp/g4c
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl >/dev/null 2>&1
mkdir -p /tmp/lc && tar xzf .llamacpp/llamacpp-src.tgz -C /tmp/lc
( python3 -c "from g4c import fixtures; print(fixtures.ensure('12b'))" > /tmp/model_path ) &
cmake -S /tmp/lc/llama.cpp -B /tmp/lc/build -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DCMAKE_BUILD_TYPE=Release \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
  > $OUT/llamacpp-build.log 2>&1 || { tail -30 $OUT/llamacpp-build.log; exit 1; }
SECONDS=0
cmake --build /tmp/lc/build --target llama-bench -j16 >> $OUT/llamacpp-build.log 2>&1 || { tail -30 $OUT/llamacpp-build.log; exit 1; }
echo "llama-bench built in ${SECONDS}s"
wait
MODEL=$(cat /tmp/model_path)
/tmp/lc/build/bin/llama-bench -m "$MODEL" -ngl 99 -p 512 -n 128 -r 3 -o json > $OUT/llamacpp-bench-12b-h100.json 2> $OUT/llamacpp-bench.err
/tmp/lc/build/bin/llama-bench -m "$MODEL" -ngl 99 -p 0 -n 32 -d 8192 -r 2 -o json > $OUT/llamacpp-bench-depth-12b-h100.json 2>> $OUT/llamacpp-bench.err
tail -5 $OUT/llamacpp-bench.err
# our side of the run (G4C_COMMIT from the caller: the copy here is no git checkout)
python3 -m g4c.provenance > $OUT/llamacpp-bench-12b-h100.provenance.json
cp $OUT/llamacpp-bench-12b-h100.provenance.json $OUT/llamacpp-bench-depth-12b-h100.provenance.json
python3 - <<'PY'
import json, os
for f in ("llamacpp-bench-12b-h100.json", "llamacpp-bench-depth-12b-h100.json"):
    try:
        for r in json.load(open(os.path.join(os.environ["OUT"], f))):
            print(f"{f}: n_prompt {r['n_prompt']} n_gen {r['n_gen']} depth {r.get('n_depth', 0)}: {r['avg_ts']:.2f} t/s (+- {r['stddev_ts']:.2f}), kv {r.get('type_k')}")
    except Exception as e:
        print(f, "unreadable:", e)
PY
