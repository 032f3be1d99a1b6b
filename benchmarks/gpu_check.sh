#!/usr/bin/env bash
# The GPU measurements issues 2 and 3 ask for, in one command for the lent device machine, which
# has torch but not rasterio/dask/zarr/smp. Prepare here, then run there (about 6-8 minutes):
#
#   ../shared/tools/device-wheels.sh pytest hypothesis iniconfig pluggy sortedcontainers packaging \
#     importlib_metadata zipp lazy-importer pygments
# (dask needs importlib_metadata and zipp, zarr lazy-importer, pytest pygments; checked in a venv holding
# only the device's packages plus these wheels, where the whole script ran on CPU)
#   # device tool: command "bash benchmarks/gpu_check.sh", carry [".whl"], timeout_s 590
#
# It writes under $OUT (or /tmp/gpu-check): gpu.txt, tests.txt, layout.md, bench_predict.md,
# bench_dask.md.
#   1. the CPU test suite's core files, run on the GPU (device auto -> cuda, bf16);
#   1b. check_layout: per-tile logits by batch shape (is padding the last batch needed, and is
#      --batch-size mask-neutral on this card?), masks by chunk size, what padding costs;
#   2. bench_predict at 16384^2 vs 8192^2, resnet50, bf16: model-only vs end-to-end tiles/s
#      (target >= 0.9) and peak RSS (target <= 1.2x);
#   3. bench_dask: in-process threads vs one worker per GPU (resources GPU=1) on 8192^2.
# SIZE, SMALL, DASK_SIZE, DEVICE, PRECISION and SKIP_INSTALL=1 (dependencies already installed)
# override; a CPU smoke run of the script itself:
#   SKIP_INSTALL=1 DEVICE=cpu PRECISION=fp32 SIZE=1024 SMALL=512 DASK_SIZE=1024 LAYOUT_SIZE=1024 \
#     LAYOUT_ENCODER=resnet18 \
#     bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp/gpu-check}"
mkdir -p "$out"
if [[ "${SKIP_INSTALL:-0}" != 1 ]]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 3
  export PYTHONPATH="/tmp/site:$PWD"
fi
export PYTHONUNBUFFERED=1
started=$SECONDS
step() { echo "== $1 (t=$((SECONDS - started)) s)" | tee -a "$out/steps.txt"; }

step "device"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || true
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
} | tee "$out/gpu.txt"

step "tests on the GPU"
# (rioxarray is not among the device's wheels: its xarray test is left to CI)
timeout 150 python3 -m pytest -q -x -p no:cacheprovider -o addopts="" tests/tiling/test_grid.py tests/tiling/test_blend.py \
  tests/test_predict.py -k "not xarray" 2>&1 | tail -15 | tee "$out/tests.txt"

step "layout"
timeout 240 python3 benchmarks/check_layout.py --device "${DEVICE:-auto}" \
  --size "${LAYOUT_SIZE:-3072}" --encoder "${LAYOUT_ENCODER:-resnet50}" 2>&1 | grep -v Warning | tee "$out/layout.md"

step "bench_predict"
timeout 300 python3 benchmarks/bench_predict.py --size "${SIZE:-16384}" --small "${SMALL:-8192}" \
  --encoder resnet50 --precision "${PRECISION:-bf16}" --device "${DEVICE:-auto}" \
  --workdir /tmp/bench-predict 2>&1 \
  | grep -v Warning | tee "$out/bench_predict.md"

step "bench_dask"
timeout 200 python3 benchmarks/bench_dask.py --size "${DASK_SIZE:-8192}" --tile-size 513 \
  --overlap 64 --chunk-size 2048 --batch-size 16 --device "${DEVICE:-cuda}" --gpu-workers 1 \
  --skip dry-run overhead 2>&1 | grep -v -e Warning -e ' - distributed\.' | tee "$out/bench_dask.md"
step "done"
