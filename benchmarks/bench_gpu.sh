#!/usr/bin/env bash
# The device check of issue 14, as one command on a GPU machine (see benchmarks/bench_gpu.py):
#   run(command="bash benchmarks/bench_gpu.sh", carry=[".whl"], timeout_s=590)
# .whl holds wheels of what the machine lacks (fair-esm, biopython; SAELens, dictionary_learning, overcomplete and
# their missing dependencies), pinned in benchmarks/gpu_wheels.txt; fetch them for Python 3.12 with
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     --platform any -d .whl -r benchmarks/gpu_wheels.txt
# (and keep /.whl/ in .git/info/exclude). The project itself is installed without dependencies so that its entry
# points (the model registry) resolve.
set -uo pipefail
OUT=${OUT:-/tmp/bench_gpu_out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir . >"$OUT/install.log" 2>&1 || { tail -5 "$OUT/install.log"; exit 1; }
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader
export PYTHONUNBUFFERED=1
if [ "${BENCH_TESTS:-1}" = 1 ]; then  # the CUDA tests that CI skips (about a minute)
  timeout 150 python3 -m pytest -q -p no:cacheprovider tests/core/test_sae_fast_paths.py tests/core/test_extract_pipeline.py \
    -k cuda 2>&1 | tail -15 | tee "$OUT/cuda_tests.log"
fi
timeout "${BENCH_LIMIT:-560}" python3 benchmarks/bench_gpu.py --out "$OUT" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench_gpu.log"
