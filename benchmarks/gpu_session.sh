#!/usr/bin/env bash
# The GPU checks of this project as one prepared run (~9 min), for a session that is lent a GPU:
#   1. the Transformer-tiny en->de recipe (8000 updates, experiments/translation/
#      multi30k_en_de_tiny_gpu.yaml) trained and scored on test_2016_flickr (issue #3's en->de
#      target, ~5 h on 2 CPU cores), stopped after FIT_MINUTES at an epoch end if not done;
#   2. benchmarks/core_throughput.py on the GPU (issue #2's GPU rows), in the time left.
# Writes logs, JSON, the averaged weights and the test hypotheses (7 files: the device tool brings
# back at most 8) to $OUT (default runs/gpu_session); the other checkpoints stay in $RUN_DIR, so a
# second call on the same machine can finish an unfinished fit with RESUME=1, or only score its
# checkpoints with SCORE_ONLY=1.
#
#   bash benchmarks/gpu_session.sh                       # on the GPU machine, python3 with torch there
#   SMOKE=1 bash benchmarks/gpu_session.sh               # CPU dry run: a few steps of everything (2-3 min
#                                                        # on 2 idle cores; BUDGET=900 when they are busy)
#
# Exits 1 if a step failed or ran out of time (the logs in $OUT say which).
#
# Needs torch, pytorch-lightning, timm, tokenizers, sacrebleu, torchmetrics, einops, pyyaml
# (not wandb or jsonargparse: the benchmark scripts drive Lightning directly).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_session}
RUN_DIR=${RUN_DIR:-/tmp/tx_gpu_tiny}
FIT_MINUTES=${FIT_MINUTES:-5.5}
PY=${PY:-python3}
# Another tiny en->de variant, e.g. experiments/translation/multi30k_en_de_tiny_fairseq.yaml (the
# reference's dropout placement; it validates every epoch, so give it a larger FIT_MINUTES)
TINY_CONFIG=${TINY_CONFIG:-experiments/translation/multi30k_en_de_tiny_gpu.yaml}
BUDGET=${BUDGET:-560}  # seconds for both steps, within the device tool's 600 s per command; the
                       # machine's start is device time too: with under ~12 min left, lower
                       # FIT_MINUTES and BUDGET (e.g. FIT_MINUTES=4 BUDGET=420)
status=0
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled
t0=$(date +%s)

fit_args=(--config "$TINY_CONFIG" --out "$RUN_DIR" --max_minutes "$FIT_MINUTES")
core_args=(--device cuda --steps 30)
if [[ -n ${SMOKE:-} ]]; then
    fit_args+=(--train_limit 1000 --max_epochs 2 --test_beams 1,2)
    core_args=(--device cpu --quick --steps 2)
fi
[[ -n ${RESUME:-} ]] && fit_args+=(--resume)
[[ -n ${SCORE_ONLY:-} ]] && fit_args+=(--skip_fit)

{
    date -u +"%F %T UTC"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
    "$PY" -c "import torch, pytorch_lightning as pl; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'lightning', pl.__version__)"
    echo "commit ${COMMIT:-unknown}"
} > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

echo "== 1. tiny en->de: ${fit_args[*]}"
# The fit's limit: its minutes (fractions kept) + 4 min of scoring, within BUDGET (it was FIT_MINUTES
# rounded down + 4 min whatever BUDGET said: 480 s of a BUDGET=420). Scoring comes first: step 2
# runs only if 60 s are left after it.
fit_timeout=$(awk -v m="$FIT_MINUTES" -v b="$BUDGET" 'BEGIN { t = int(m * 60) + 240; if (t > b - 20) t = b - 20; print t }')
timeout "$fit_timeout" "$PY" benchmarks/translation_train.py "${fit_args[@]}" > "$OUT/translation.log" 2>&1
rc=$?; (( rc )) && status=1
echo "rc=$rc after $(( $(date +%s) - t0 )) s"
grep -E '^\{"epoch' "$OUT/translation.log" | tail -3 | cut -c1-200
tail -6 "$OUT/translation.log"
# Only what this call wrote (newer than machine.txt): a RESUME=1 or SCORE_ONLY=1 call that fails
# before scoring must not bring back the previous call's result or weights as its own.
fresh() { [[ -f $1 && $1 -nt "$OUT/machine.txt" ]]; }
fresh "$RUN_DIR/result.json" && cp "$RUN_DIR/result.json" "$OUT/translation_result.json"
# The newest segment's metrics: a RESUME=1 segment logs to resumed_at_epoch_N/metrics.csv.
metrics=$(ls -t "$RUN_DIR"/metrics.csv "$RUN_DIR"/resumed_at_epoch_*/metrics.csv 2>/dev/null | head -1)
[[ -n $metrics ]] && cp "$metrics" "$OUT/translation_metrics.csv"
# The scored weights and hypotheses come back too (a machine stays warm 30 s, so a second call
# rarely finds $RUN_DIR): the BLEU figures can then be checked and the weights rescored on CPU.
# One archive for the hypotheses: the device tool brings back at most 8 files from $OUT (7 here).
fresh "$RUN_DIR/checkpoints/averaged.ckpt" && cp "$RUN_DIR/checkpoints/averaged.ckpt" "$OUT/translation_averaged.ckpt"
hyps=()
for f in "$RUN_DIR"/test_*/test_hypotheses.txt; do fresh "$f" && hyps+=("${f#"$RUN_DIR"/}"); done
(( ${#hyps[@]} )) && (cd "$RUN_DIR" && tar czf - "${hyps[@]}") > "$OUT/translation_hypotheses.tgz"

left=$(( BUDGET - ($(date +%s) - t0) ))
echo "== 2. core throughput (${left} s left)"
if (( left > 60 )); then
    timeout "$left" "$PY" benchmarks/core_throughput.py "${core_args[@]}" > "$OUT/core_throughput.log" 2>&1
    rc=$?; (( rc )) && status=1
    echo "rc=$rc"
    tail -30 "$OUT/core_throughput.log"
else
    echo "skipped: too little time left"
    status=1
fi
echo "done after $(( $(date +%s) - t0 )) s, status $status"
exit "$status"
