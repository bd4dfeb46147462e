#!/usr/bin/env bash
# Train a tina_jax recipe on one host with N GPUs: one process drives every GPU (JAX's single-controller
# model); the mesh (data, fsdp, tensor) spreads the batch and, with fsdp > 1, the weights over them.
#
#   launch/multi_gpu.sh [--dry-run] [--gpus N] [--mesh D,F,T] [TRAIN_ARGS...]
#     --gpus N     GPUs to use (default: all that nvidia-smi lists; sets CUDA_VISIBLE_DEVICES=0..N-1)
#     --mesh D,F,T mesh shape (default: N,1,1 = data parallel; e.g. 1,8,1 shards weights and optimizer state)
#     TRAIN_ARGS   passed to launch/train.py (default: --config configs/tina_open_rs3.yaml)
#   --dry-run prints the command instead of running it.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/common.sh"  # show

DRY=0; GPUS=""; MESH=""; TRAIN_ARGS=()
while (($#)); do
  case "$1" in
    --dry-run) DRY=1 ;;
    --gpus) GPUS=$2; shift ;;
    --mesh) MESH=$2; shift ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) TRAIN_ARGS+=("$1") ;;
  esac
  shift
done
((${#TRAIN_ARGS[@]})) || TRAIN_ARGS=(--config configs/tina_open_rs3.yaml)
if [[ -z "$GPUS" ]]; then
  GPUS=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
  [[ "$GPUS" -ge 1 ]] || { ((DRY)) && GPUS=8 || { echo "multi_gpu.sh: no GPU found by nvidia-smi; give --gpus N" >&2; exit 2; }; }
fi
MESH=${MESH:-$GPUS,1,1}
VISIBLE=$(seq -s, 0 $((GPUS - 1)))
cd "$(dirname "$0")/.."
cmd=(env CUDA_VISIBLE_DEVICES="$VISIBLE" XLA_PYTHON_CLIENT_MEM_FRACTION=0.9
     python launch/train.py "${TRAIN_ARGS[@]}" "mesh.shape=[$MESH]")
show "${cmd[@]}"
((DRY)) || exec "${cmd[@]}"
