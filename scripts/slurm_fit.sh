#!/bin/bash
# Multi-node `tx-suite fit` under SLURM: one task (process) per GPU, Lightning reads SLURM's
# variables (SLURMEnvironment) for ranks and the rendezvous address.
#
#   sbatch scripts/slurm_fit.sh --config experiments/translation/multi30k_de_en.yaml \
#                               --config experiments/scale/ddp.yaml [--config experiments/scale/bf16.yaml] [--key=value ...]
#   sbatch --nodes=4 scripts/slurm_fit.sh ...        # #SBATCH values can be overridden on the command line
#
# The counts must agree: --ntasks-per-node = --gpus-per-node = trainer.devices, and
# --nodes = trainer.num_nodes (Lightning stops with an error otherwise). This script passes
# trainer.num_nodes and trainer.devices from SLURM_NNODES and SLURM_NTASKS_PER_NODE, so only the
# #SBATCH lines need editing. Global batch = nodes x tasks per node x data.batch_size.
#
# Run directory: runs/<experiment>/slurm-<job id>/, shared by all ranks (rank 0 writes it).
# A requeued job (preemption, `scontrol requeue`, --requeue) continues that run from its
# last.ckpt; add --checkpoint.last_every_n_train_steps=N to lose at most N steps.
# DRY_RUN=1 prints the srun command instead of running it. See docs/operations.md.
#
#SBATCH --job-name=tx-suite
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --output=slurm-%j.out

set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"

: "${SLURM_JOB_ID:?submit with sbatch (or set SLURM_JOB_ID, SLURM_NNODES, SLURM_NTASKS_PER_NODE)}"
NODES="${SLURM_NNODES:?}"
TASKS_PER_NODE="${SLURM_NTASKS_PER_NODE%%(*}"  # "4(x2)" -> "4"
TX_SUITE="${TX_SUITE:-tx-suite}"              # e.g. TX_SUITE="python -m tx_suite"

# The experiment and runs directory exactly as tx-suite resolves them (trainer-only configs such as
# experiments/scale/ddp.yaml do not rename the experiment; --experiment, --runs_dir, configs that
# set them): ask it. This also stops a bad config here, before srun starts every rank.
if ! CONFIG="$(${TX_SUITE} fit "$@" --print_config)"; then
  echo "slurm_fit.sh: '${TX_SUITE} fit $* --print_config' failed (message above); nothing started" >&2
  exit 2
fi
top_level() { sed -n "s/^$1: //p" <<<"${CONFIG}" | sed -e "s/^'\(.*\)'\$/\1/" -e 's/^"\(.*\)"$/\1/'; }
EXPERIMENT="$(top_level experiment)"
RUNS_DIR="$(top_level runs_dir)"
: "${EXPERIMENT:?no experiment name in the resolved config}" "${RUNS_DIR:?no runs_dir in the resolved config}"

RUN_ID="slurm-${SLURM_JOB_ID}"
RUN_DIR="${RUNS_DIR}/${EXPERIMENT}/${RUN_ID}"
RESUME=()
# The newest last.ckpt of this job's runs: slurm-<id>, or slurm-<id>-rN after a start that died
# before its first checkpoint (a later requeue must continue rN, not start again).
LAST="$(ls -t "${RUN_DIR}/checkpoints/last.ckpt" "${RUN_DIR}"-r*/checkpoints/last.ckpt 2>/dev/null | head -n 1 || true)"
if [[ -n "${LAST}" ]]; then
  RESUME=(--ckpt_path "${LAST}")                             # requeued: continue in place
elif [[ -e "${RUN_DIR}" ]]; then
  RUN_ID="${RUN_ID}-r${SLURM_RESTART_COUNT:-1}"              # died before its first checkpoint
fi

CMD=(srun --kill-on-bad-exit=1 ${TX_SUITE} fit "$@"
     --trainer.num_nodes="${NODES}" --trainer.devices="${TASKS_PER_NODE}"
     --run_id="${RUN_ID}" "${RESUME[@]}")
if [[ -n "${DRY_RUN:-}" ]]; then
  printf '%q ' "${CMD[@]}"; echo
  exit 0
fi
exec "${CMD[@]}"
