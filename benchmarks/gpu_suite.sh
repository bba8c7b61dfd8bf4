#!/usr/bin/env bash
# Everything the fused-kernel issue measures on a GPU, in one run: the kernels' equality tests
# at full size, then the step benchmark at the sheet's four sizes and the feed-forward benchmark.
# Peers (snnTorch, SpikingJelly, Norse, CuPy) are measured where they are installed. Last, the
# segregated-dendrite replica path (a CUDA graph per example for 1, 64 and 256 networks).
#     bash benchmarks/gpu_suite.sh > gpu_results.md
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python -m pytest -q tests/test_triton_kernels.py
for size in evidence pattern-600 speech wide; do
    python benchmarks/rsnn_step.py --device cuda --size "$size" --repeats 5
    echo
done
python benchmarks/feedforward_lif.py --device cuda --repeats 5
echo
python benchmarks/rsnn_memory.py --backend triton --steps 2250 9000 22500 100000
echo
python benchmarks/foraging_throughput.py --device cuda --agents 80 640 5120 --cycles 30
echo
python benchmarks/segregated_dendrites.py --device cuda --replicas 1 64 256 --examples 512 \
    --test-examples 512 --backend replicas replicas-eager torch --repeats 3
