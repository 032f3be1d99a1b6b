#!/usr/bin/env bash
# Start one dask worker process per GPU of this machine, each bound to its own card.
#
#   workflows/dask-gpu-workers.sh tcp://scheduler:8786          # all GPUs
#   GPUS="0 2" workflows/dask-gpu-workers.sh tcp://scheduler:8786
#
# Each worker: one process (--nworkers 1), two threads (one infers on the GPU while the other
# reads windows / writes chunks), and advertises GPU=1 so GPU tasks never pile up on one card.
# The model is loaded once per worker process and cached there.
set -euo pipefail
ADDR="${1:?usage: $0 SCHEDULER_ADDRESS (e.g. tcp://head:8786)}"
GPUS="${GPUS:-$(nvidia-smi --query-gpu=index --format=csv,noheader | tr '\n' ' ')}"
THREADS="${THREADS:-2}"
pids=()
for gpu in $GPUS; do
  CUDA_VISIBLE_DEVICES="$gpu" TILESEG_SCHEDULER="" \
    dask worker "$ADDR" --nworkers 1 --nthreads "$THREADS" --resources GPU=1 \
      --name "$(hostname)-gpu$gpu" --local-directory "${TMPDIR:-/tmp}/dask-gpu$gpu" &
  pids+=("$!")
done
trap 'kill "${pids[@]}" 2>/dev/null' INT TERM
wait
