#!/bin/bash
# Multi-node `tx-suite fit` with torchrun (no SLURM): run this same command on every node, with
# NODE_RANK = 0 .. NNODES-1 and MASTER_ADDR = the address of node 0.
#
#   NNODES=2 NODE_RANK=0 NPROC_PER_NODE=8 MASTER_ADDR=10.0.0.1 RUN_ID=exp42 \
#     scripts/torchrun_fit.sh --config experiments/vision/cifar10_vit.yaml --config experiments/scale/ddp.yaml
#
# torchrun starts NPROC_PER_NODE processes per node (one per GPU) and sets RANK/LOCAL_RANK/
# WORLD_SIZE; Lightning reads them (TorchElasticEnvironment) and checks that
# trainer.num_nodes x trainer.devices = WORLD_SIZE. This script passes trainer.num_nodes=NNODES
# and trainer.devices=NPROC_PER_NODE, so they always agree. RUN_ID (the same on every node) names
# the run directory runs/<experiment>/<RUN_ID>/ and the rendezvous; rank 0 writes the run.
# Single node: NNODES=1 (the defaults) is enough. See docs/operations.md.
set -euo pipefail

NNODES="${NNODES:-1}"
NODE_RANK="${NODE_RANK:-0}"
# `|| true`: under `set -e -o pipefail` a missing nvidia-smi ended the script before its message below
NPROC_PER_NODE="${NPROC_PER_NODE:-$( { nvidia-smi -L 2>/dev/null || true; } | grep -c '^GPU' || true)}"
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
MASTER_PORT="${MASTER_PORT:-29500}"
if [[ "${NNODES}" -gt 1 && -z "${RUN_ID:-}" ]]; then
  # a default from the clock differs between nodes started seconds apart: no rendezvous
  echo "torchrun_fit.sh: NNODES=${NNODES}: set RUN_ID, the same on every node" >&2
  exit 2
fi
RUN_ID="${RUN_ID:-torchrun-$(date +%Y%m%d-%H%M%S)}"
PYTHON="${PYTHON:-python}"
if [[ "${NPROC_PER_NODE}" -lt 1 ]]; then
  echo "torchrun_fit.sh: no GPU found; set NPROC_PER_NODE" >&2
  exit 2
fi

exec "${PYTHON}" -m torch.distributed.run \
  --nnodes="${NNODES}" --node-rank="${NODE_RANK}" --nproc-per-node="${NPROC_PER_NODE}" \
  --rdzv-backend=c10d --rdzv-endpoint="${MASTER_ADDR}:${MASTER_PORT}" --rdzv-id="${RUN_ID}" \
  -m tx_suite fit "$@" \
  --trainer.num_nodes="${NNODES}" --trainer.devices="${NPROC_PER_NODE}" --run_id="${RUN_ID}"
