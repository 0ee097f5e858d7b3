#!/usr/bin/env bash
# CSDI forecasting on the real electricity subset on ONE GPU: three variants of
# experiments/forecasting/electricity/csdi_subset_gpu.yaml trained side by side (small models leave a GPU mostly
# idle, so three processes share it), each tested with 100 samples per window drawn by DPM-Solver++(2M) in 10 steps
# (TEST_ARGS; the config's 100 DDPM-50 samples of three runs at once, 203 series, did not finish in 3 minutes on an
# H200 on 2026-11-27). Every run folder
# (metrics.csv, metrics.json, fan_chart.png, config.yaml, last.ckpt) is packed to $OUT/<variant>.tar.gz.
#
#   OUT=gpu_out DATA=../shared/data/electricity_subset/electricity_lstnet_subset_gluonts.tar.gz \
#   MAX_TIME=00:00:05:45 bash benchmarks/scripts/gpu_forecasting_subset.sh
#
# ARGS: more CLI overrides for every run; a CPU smoke test of the whole script (about 4 minutes on 2 cores):
#   PY=python ARGS="--trainer.max_epochs 1 --trainer.limit_train_batches 3 --trainer.limit_val_batches 1
#   --model.init_args.num_samples 2 --model.init_args.sample_steps 2" bash benchmarks/scripts/gpu_forecasting_subset.sh
# Wheels in .whl/ (jsonargparse and its needs, absent from some GPU images) are installed to /tmp/site first.
set -u
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
DATA=${DATA:-../shared/data/electricity_subset/electricity_lstnet_subset_gluonts.tar.gz}
MAX_TIME=${MAX_TIME:-00:00:05:45}   # training cap per run; the test follows it
LIMIT=${LIMIT:-520}                 # seconds after which a run is stopped, so that the packing below happens
TEST_ARGS=${TEST_ARGS:---model.init_args.sampler dpmpp --model.init_args.sample_steps 10}
PY=${PY:-python3}
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/env.txt" 2>&1
$PY -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')" >> "$OUT/env.txt" 2>&1
date -u +%FT%TZ >> "$OUT/env.txt"
CONFIG=experiments/forecasting/electricity/csdi_subset_gpu.yaml
declare -A EXTRA=(
  [standard_linear]=""
  [context_linear]="--data.init_args.scaling context"
  [context_softmax]="--data.init_args.scaling context --model.init_args.denoiser.init_args.attention softmax"
)
pids=()
for v in "${!EXTRA[@]}"; do
  # shellcheck disable=SC2086
  timeout "$LIMIT" $PY -m tsdiffusion.cli fit --config "$CONFIG" --data.init_args.path "$DATA" \
    --trainer.max_time "$MAX_TIME" --trainer.enable_progress_bar false \
    --trainer.logger.init_args.save_dir runs_gpu --trainer.logger.init_args.name "$v" \
    --record_dir "runs_gpu/$v" ${EXTRA[$v]} $TEST_ARGS ${ARGS:-} > "$OUT/$v.log" 2>&1 &
  pids+=($!)
done
( while sleep 60; do nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader; done ) >> "$OUT/env.txt" 2>&1 &
mon=$!
wait "${pids[@]}"
kill $mon 2>/dev/null
for v in "${!EXTRA[@]}"; do
  [ -d "runs_gpu/$v" ] && tar -czf "$OUT/$v.tar.gz" -C runs_gpu "$v"
  grep -h '"crps_sum": ' "runs_gpu/$v/metrics.json" 2>/dev/null
done
date -u +%FT%TZ >> "$OUT/env.txt"; grep -h "stopped" "$OUT"/*.log
echo done
