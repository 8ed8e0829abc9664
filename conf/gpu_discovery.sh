#!/usr/bin/env bash
# Spark GPU discovery script (spark.executor.resource.gpu.discoveryScript, and for standalone
# workers spark.worker.resource.gpu.discoveryScript): prints the GPUs of this node as
#   {"name": "gpu", "addresses": ["0", "1", ...]}
# from nvidia-smi's GPU indices. Must exist at the same path on every node (docs/deploy.md).
# A local master runs it on the driver (spark.driver.resource.gpu.discoveryScript, set by
# photoz_spark/spark.py). When CUDA_VISIBLE_DEVICES lists GPU indices, only those are printed
# (TorchDistributor hands the printed addresses to its ranks as CUDA_VISIBLE_DEVICES).
set -euo pipefail
if ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "gpu_discovery.sh: nvidia-smi not found on $(hostname): this node has no NVIDIA driver; set spark.gpu.enabled=false or run executors on GPU nodes" >&2
  exit 1
fi
indices=$(nvidia-smi --query-gpu=index --format=csv,noheader)
if [[ "${CUDA_VISIBLE_DEVICES:-}" =~ ^[0-9]+(,[0-9]+)*$ ]]; then
  indices=$(echo "$CUDA_VISIBLE_DEVICES" | tr ',' ' ')
fi
addresses=""
for index in $indices; do
  addresses="${addresses:+$addresses, }\"${index}\""
done
echo "{\"name\": \"gpu\", \"addresses\": [${addresses}]}"
