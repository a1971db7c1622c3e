#!/usr/bin/env bash
# The GPU check, for a machine with one CUDA GPU and PyTorch but no Pyro and no network (the
# device tool's machines): the device-dependent tests on CUDA, then benchmarks/speed.py on CUDA.
# It writes tests_cuda.log, speed_cuda.json and speed_cuda.md to $OUT (default: runs/gpu_check).
#
# Prepare in the checkout, where pip can reach the package index (.whl/ and .gpu-data/ are ignored):
#   echo /.whl/ >> .git/info/exclude; echo /.gpu-data/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       -d .whl pyro-ppl==1.9.2 pyro-api==0.1.2
#   mkdir -p .gpu-data/MNIST/raw && cp ../shared/data/MNIST/raw/*.gz .gpu-data/MNIST/raw/
# then run it with the device tool: command "bash benchmarks/gpu_check.sh", carry [".whl", ".gpu-data"],
# timeout_s 590. The two parts are timed out separately so that the benchmark's files come back.
set -uo pipefail
OUT="${OUT:-runs/gpu_check}"
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 PYRO_VAE_DATA="$PWD/.gpu-data"
gunzip -kf .gpu-data/MNIST/raw/*.gz
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
# tests/test_step.py and tests/test_precision.py run their device-dependent cases on CUDA too where it exists.
timeout 240 python3 -m pytest -q -p no:cacheprovider -x tests/test_step.py tests/test_precision.py tests/test_evaluation.py \
    2>&1 | tee "$OUT/tests_cuda.log"
timeout 300 python3 benchmarks/speed.py --device cuda --repeats 3 --batch-sizes 100 1000 --objectives meanfield trace \
    --eval-images 10000 --eval-chunk-sizes 10000 100000 --epoch --out "$OUT/speed_cuda.json" 2>&1 | tail -n 60
