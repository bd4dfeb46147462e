#!/usr/bin/env bash
# Train a tina_jax recipe on a Cloud TPU VM or pod slice (v4, v5e, v5p, v6e): create, install, train on
# every worker, tear down. Run it from your own machine with the gcloud CLI logged in.
#
#   launch/tpu_pod.sh [--dry-run] STAGE... [-- TRAIN_ARGS...]
#     STAGE: create | install | train | delete | all (= create install train delete)
#     TRAIN_ARGS: passed to launch/train.py (default: --config configs/tina_open_rs3.yaml)
#
# Settings (environment): TPU_NAME (tina-jax), ZONE (us-central1-a), PROJECT (gcloud's default),
#   ACCELERATOR (v5litepod-16), RUNTIME (derived from ACCELERATOR), REPO (git URL of this repository),
#   BRANCH (main), SPOT (1: a Spot VM), RUN_DIR (runs/<config name>; on a pod slice it must be a directory
#   every worker shares, e.g. a gcsfuse or Filestore mount, because Orbax writes each host's shards there).
#
# Every worker runs the same launch/train.py; jax.distributed finds the slice's other workers itself
# (tina_jax.distributed), the mesh's -1 entry takes all chips, and only worker 0 writes logs.
#   --dry-run prints the commands instead of running them.
set -euo pipefail

DRY=0
STAGES=()
TRAIN_ARGS=()
while (($#)); do
  case "$1" in
    --dry-run) DRY=1 ;;
    --) shift; TRAIN_ARGS=("$@"); break ;;
    create|install|train|delete) STAGES+=("$1") ;;
    all) STAGES+=(create install train delete) ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "tpu_pod.sh: unknown argument '$1' (stages: create install train delete all; train args go after --)" >&2; exit 2 ;;
  esac
  shift
done
((${#STAGES[@]})) || { echo "tpu_pod.sh: give at least one stage: create install train delete all" >&2; exit 2; }
((${#TRAIN_ARGS[@]})) || TRAIN_ARGS=(--config configs/tina_open_rs3.yaml)

TPU_NAME=${TPU_NAME:-tina-jax}
ZONE=${ZONE:-us-central1-a}
ACCELERATOR=${ACCELERATOR:-v5litepod-16}
REPO=${REPO:-https://github.com/OWNER/tina_jax.git}
BRANCH=${BRANCH:-main}
if [[ -z "${RUNTIME:-}" ]]; then  # TPU software versions for JAX (cloud.google.com/tpu/docs/runtimes)
  case "$ACCELERATOR" in
    v4-*) RUNTIME=tpu-ubuntu2204-base ;;
    v5litepod-*|v5e-*) RUNTIME=v2-alpha-tpuv5-lite ;;
    v5p-*) RUNTIME=v2-alpha-tpuv5 ;;
    v6e-*) RUNTIME=v2-alpha-tpuv6e ;;
    *) echo "tpu_pod.sh: no default runtime for ACCELERATOR=$ACCELERATOR; set RUNTIME" >&2; exit 2 ;;
  esac
fi
PROJECT_FLAG=()
[[ -n "${PROJECT:-}" ]] && PROJECT_FLAG=(--project="$PROJECT")
SPOT_FLAG=()
[[ "${SPOT:-0}" == 1 ]] && SPOT_FLAG=(--spot)
RUN_DIR_ARG=()
[[ -n "${RUN_DIR:-}" ]] && RUN_DIR_ARG=("train.run_dir=$RUN_DIR")

source "$(dirname "${BASH_SOURCE[0]}")/common.sh"  # show
run() {  # print the command, then run it unless --dry-run
  show "$@"
  ((DRY)) || "$@"
}

on_all_workers() {
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" "${PROJECT_FLAG[@]}" --worker=all --command="$1"
}

train_cmd=$(printf ' %q' python3 launch/train.py "${TRAIN_ARGS[@]}" "${RUN_DIR_ARG[@]}")
for stage in "${STAGES[@]}"; do
  case "$stage" in
    create)
      run gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" "${PROJECT_FLAG[@]}" \
        --accelerator-type="$ACCELERATOR" --version="$RUNTIME" "${SPOT_FLAG[@]}" ;;
    install)
      if [[ "$REPO" == *OWNER* ]] && ((!DRY)); then
        echo "tpu_pod.sh: set REPO to the git URL of this repository (workers clone it)" >&2; exit 2
      fi
      on_all_workers "set -e; (test -d tina_jax || git clone --branch $BRANCH $REPO tina_jax); cd tina_jax; git pull --ff-only; pip install -U 'jax[tpu]' -e ." ;;
    train)
      on_all_workers "cd tina_jax &&$train_cmd" ;;
    delete)
      run gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE" "${PROJECT_FLAG[@]}" --quiet ;;
  esac
done
