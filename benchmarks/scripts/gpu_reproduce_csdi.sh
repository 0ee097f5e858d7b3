#!/usr/bin/env bash
# CSDI trained from scratch on PhysioNet 2012 set-a at the paper's config (issue 15, item 5), then scored on the FULL
# fold-0 test set (799 records) with 100 DDPM-50 samples per record, all in ONE device call (at most 10 minutes).
# The config is experiments/imputation/physionet/csdi_10.yaml unchanged (10% held out, seed 1, 200 epochs, batch 16,
# Adam 1e-3 x0.1 at 75% and 90% of the epochs, 50 quad steps, 4 layers x 64 channels, 8 heads, 100 DDPM samples);
# this script adds only how it runs: one GPU, bf16-mixed, no validation passes (the paper keeps the last model; the
# validation loss only monitors), 47 test records per batch (799 = 17 x 47) and one sampler call per batch
# (4,700 rows), torch.compile of the denoiser (COMPILE=1; tsdiffusion.compile, eager fallback), and a time guard.
#
# NOT YET RUN ON A GPU (none was lent to the session that wrote it, 2026-11-30). Everything below about time is an
# ESTIMATE, not a measurement: 2,797 training records / 16 = 175 steps x 200 epochs = 35,000 optimisation steps;
# one eager step is ~1,900 aten calls forward + backward (views included; counted on CPU with torch.profiler), so on
# an H200 it is launch-bound: guessed ~10-15 ms/step (6-9 min: would NOT fit beside the test); compiled, guessed
# ~4-6 ms/step (2-4 min) plus 1-2 min of compilation (for scale: the smoke run with COMPILE=1 took 9 min on one CPU
# thread here, nearly all of it inductor compiling); the test is 799 x 100 rows x 50 steps = 4.0M denoiser rows of
# 48 x 35, guessed 1-3 min (memory-bound). The guard keeps the call inside its limit whatever the real figures are:
# training stops at max_time = LIMIT - TEST_RESERVE - 30 s, the test of last.ckpt follows, and status.json says
# whether all 200 epochs ran ("complete"). If not, rerun with RESUME=<the returned last.ckpt> (carried back): training
# continues (epoch, optimiser, LR schedule, Timer), then the test; a RESUME of a finished run is only tested (the
# record's ckpt_path is then null: Lightning finds no new last.ckpt and tests the restored weights). After the first
# GPU call, size TEST_RESERVE / EVAL_RECORDS / COMPILE from status.json (train_seconds, s_per_step, total_seconds).
#
# Once, here (the device machine has no network; the data and jsonargparse's wheels travel as ignored paths):
#   echo /.gpu_inputs/ >> .git/info/exclude; echo /.whl/ >> .git/info/exclude
#   mkdir -p .gpu_inputs && cp ../shared/data/physionet2012/{set-a.tar.gz,Outcomes-a.txt} .gpu_inputs/
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl \
#     jsonargparse==4.53.0 docstring_parser==0.18.0 typeshed_client==2.15.0   # absent from the device image
#   PREP=1 bash benchmarks/scripts/gpu_reproduce_csdi.sh    # optional: parses set-a into .gpu_inputs/cache (~3 s saved there)
# On the device (run tool, carry [".gpu_inputs", ".whl"], timeout_s 600):
#   OUT=$OUT bash benchmarks/scripts/gpu_reproduce_csdi.sh
# $OUT receives (8 files at most come back): env.txt (machine, command, times), fit.log, metrics.json (the CLI's
# result record), training_log.csv (Lightning's metrics.csv), config.yaml, last.ckpt (~5 MB, for RESUME),
# calibration.png, status.json (epochs/steps done, stop reason, complete or not).
#
# Other modes (the tests run both on CPU, tests/benchmark/test_gpu_scripts.py):
#   DRY=1   writes $OUT/command.txt and $OUT/config_resolved.yaml (LightningCLI --print_config) and runs nothing
#   SMOKE=1 DEVICE=cpu  the same pipeline on 25 records of the embedded subset (tsdiffusion/resources), 1 epoch of 2
#           batches, 2 samples, 2 DDPM steps: seconds on a CPU. Its numbers mean nothing.
set -u
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
SMOKE=${SMOKE:-0}
DRY=${DRY:-0}
PREP=${PREP:-0}
DEVICE=${DEVICE:-cuda}                    # cuda | cpu
DATA=${DATA:-.gpu_inputs/set-a.tar.gz}
CACHE=${CACHE:-.gpu_inputs/cache}         # the parsed-records cache (PhysioNetDataModule cache_dir)
RUNS=${RUNS:-runs_gpu}                    # run folders (git-ignored); not under $OUT: only 8 files come back
NAME=${NAME:-csdi_physionet_10pct}
RESUME=${RESUME:-}                        # a last.ckpt of an earlier call: training continues from it
LIMIT=${LIMIT:-560}                       # seconds for the whole fit + test, so that the copies below happen
TEST_RESERVE=${TEST_RESERVE:-180}         # seconds kept for the test after training (estimate, see above)
EVAL_RECORDS=${EVAL_RECORDS:-47}          # test records per batch (799 = 17 x 47); x 100 samples per sampler call
if [ "$DEVICE" = cpu ]; then ACCEL=cpu; PRECISION=${PRECISION:-32-true}; COMPILE=${COMPILE:-0}
else ACCEL=gpu; PRECISION=${PRECISION:-bf16-mixed}; COMPILE=${COMPILE:-1}; fi
COMPILE_MODE=${COMPILE_MODE:-}            # torch.compile mode ("" default, "reduce-overhead" = CUDA graphs, untested)
PY=${PY:-python3}
WHEELS=${WHEELS:-.whl}
CONFIG=experiments/imputation/physionet/csdi_10.yaml
VERSION=${VERSION:-$(date -u +%Y%m%dT%H%M%S)}
RUN=$RUNS/$NAME/$VERSION
start=$(date +%s)

if ls "$WHEELS"/*.whl >/dev/null 2>&1; then   # jsonargparse and its needs (LightningCLI), not in the device image
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1 COMPILE COMPILE_MODE

if [ "$SMOKE" = 1 ]; then
  [ "$DATA" = .gpu_inputs/set-a.tar.gz ] && DATA=embedded
  # the smoke knobs: the only settings that differ from the paper run (the test checks this)
  SMOKE_ARGS=(--data.init_args.max_records 25 --trainer.max_epochs 1 --trainer.limit_train_batches 2
              --model.init_args.num_samples 2 --model.init_args.sample_steps 2)
else
  SMOKE_ARGS=()
fi

if [ "$PREP" = 1 ]; then
  $PY -c "import sys; from tsdiffusion.data import PhysioNetDataModule as D; d = D(path=sys.argv[1], cache_dir=sys.argv[2]); d.prepare_data(); print(d.cache_file)" "$DATA" "$CACHE"
  exit $?
fi

max_time=$(( LIMIT - TEST_RESERVE - 30 )); [ "$max_time" -lt 10 ] && max_time=10   # 30 s: imports, data, CUDA
if [ -n "$RESUME" ]; then  # Lightning's Timer resumes its clock from the checkpoint: add the time already trained
  trained=$($PY -c "import sys, torch; c = torch.load(sys.argv[1], map_location='cpu', weights_only=False).get('callbacks', {}); print(int(max([v['time_elapsed'].get('train', 0) for v in c.values() if isinstance(v, dict) and 'time_elapsed' in v] or [0])))" "$RESUME") || exit 1
  max_time=$(( max_time + trained ))
fi
MAX_TIME=$(printf '00:%02d:%02d:%02d' $((max_time / 3600)) $((max_time % 3600 / 60)) $((max_time % 60)))
ARGS=(fit --config "$CONFIG"
      --trainer.accelerator "$ACCEL" --trainer.devices 1 --trainer.precision "$PRECISION"
      --trainer.max_time "$MAX_TIME" --trainer.limit_val_batches 0 --trainer.enable_progress_bar false
      --trainer.default_root_dir "$RUNS"
      --trainer.logger.init_args.save_dir "$RUNS" --trainer.logger.init_args.name "$NAME"
      --trainer.logger.init_args.version "$VERSION"
      --data.init_args.path "$DATA" --data.init_args.cache_dir "$CACHE"
      --data.init_args.eval_batch_size "$EVAL_RECORDS"
      --model.init_args.sample_batch_size $((EVAL_RECORDS * 100))
      --test_after_fit true --record_dir "$RUN"
      "${SMOKE_ARGS[@]}")
[ -n "$RESUME" ] && ARGS+=(--ckpt_path "$RESUME")
# shellcheck disable=SC2206
[ -n "${EXTRA:-}" ] && ARGS+=($EXTRA)   # more CLI overrides (then the run is no longer the paper config)

# The CLI, plus torch.compile of the denoiser before fit when COMPILE=1 (the library has no CLI switch for it).
DRIVER='
import os, sys
from tsdiffusion.cli import TSDiffusionCLI

class CLI(TSDiffusionCLI):
    def before_fit(self):
        if os.environ.get("COMPILE") == "1":
            from tsdiffusion.compile import compile_denoiser
            compile_denoiser(self.model.denoiser, mode=os.environ.get("COMPILE_MODE") or None, dynamic=True)
            print("torch.compile: denoiser compiled (dynamic shapes)", file=sys.stderr)

CLI()  # reads sys.argv
'

if [ "$DRY" = 1 ]; then
  printf '%q ' "$PY" -m tsdiffusion.cli "${ARGS[@]}" > "$OUT/command.txt"; echo >> "$OUT/command.txt"
  $PY -m tsdiffusion.cli "${ARGS[@]}" --print_config > "$OUT/config_resolved.yaml"
  exit $?
fi

rm -f "$OUT"/{env.txt,fit.log,metrics.json,training_log.csv,config.yaml,calibration.png,last.ckpt,status.json}
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
  $PY -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')"
  echo "SMOKE=$SMOKE DEVICE=$DEVICE PRECISION=$PRECISION COMPILE=$COMPILE COMPILE_MODE=$COMPILE_MODE LIMIT=$LIMIT TEST_RESERVE=$TEST_RESERVE RESUME=$RESUME"
  printf '%q ' "$PY" -c DRIVER "${ARGS[@]}"; echo
  echo "start $(date -u +%FT%TZ)"
} > "$OUT/env.txt" 2>&1

left=$(( LIMIT - ($(date +%s) - start) )); [ "$left" -lt 1 ] && left=1   # (timeout 0 would mean no limit)
timeout -k 15 "$left" $PY -c "$DRIVER" "${ARGS[@]}" > "$OUT/fit.log" 2>&1
rc=$?
echo "end $(date -u +%FT%TZ) rc=$rc after $(( $(date +%s) - start )) s" >> "$OUT/env.txt"

[ -f "$RUN/metrics.json" ] && cp "$RUN/metrics.json" "$OUT/metrics.json"
[ -f "$RUN/metrics.csv" ] && cp "$RUN/metrics.csv" "$OUT/training_log.csv"
[ -f "$RUN/config.yaml" ] && cp "$RUN/config.yaml" "$OUT/config.yaml"
[ -f "$RUN/calibration.png" ] && cp "$RUN/calibration.png" "$OUT/calibration.png"
if [ -f "$RUN/checkpoints/last.ckpt" ]; then cp "$RUN/checkpoints/last.ckpt" "$OUT/last.ckpt"
elif [ -n "$RESUME" ] && [ -f "$RESUME" ]; then cp "$RESUME" "$OUT/last.ckpt"; fi  # nothing left to train: RESUME was tested

# status.json: how far training got (from last.ckpt), why it stopped (Lightning's own line in fit.log), the CRPS
$PY - "$OUT" "$rc" "$RESUME" "$(( $(date +%s) - start ))" <<'EOF'
import json, re, sys
from pathlib import Path

out, rc, resume, total = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
status = {"rc": rc, "resumed_from": resume or None, "record": (out / "metrics.json").exists(), "complete": False,
          "total_seconds": total}
log = (out / "fit.log").read_text(errors="replace") if (out / "fit.log").exists() else ""
stop = re.findall(r"`Trainer.fit` stopped: `(max_epochs|max_steps)|(Time limit reached)", log)
status["stopped_by"] = (stop[-1][0] or "max_time") if stop else "timeout (killed)" if rc in (124, 137) else None
status["compiled"] = "denoiser compiled" in log and "runs eagerly" not in log
if (out / "last.ckpt").exists():
    import torch

    ckpt = torch.load(out / "last.ckpt", map_location="cpu", weights_only=False)
    # a max_time stop saves its last, partial epoch too: global_step is exact (paper run: 200 x 175 = 35,000)
    status |= {"epochs_done": ckpt.get("epoch", -1) + 1, "global_step": ckpt.get("global_step")}
    timer = [v for v in ckpt.get("callbacks", {}).values() if isinstance(v, dict) and "time_elapsed" in v]
    if timer and status["global_step"]:  # Lightning's Timer: training seconds (compilation included), all calls
        status["train_seconds"] = round(timer[0]["time_elapsed"].get("train", 0.0), 1)
        status["s_per_step"] = round(status["train_seconds"] / status["global_step"], 5)
if status["record"]:
    rec = json.loads((out / "metrics.json").read_text())
    status |= {k: rec["metrics"].get(k) for k in ("crps", "mae_median", "rmse_median")}
    max_epochs = rec["config"]["trainer"]["max_epochs"]
    status["complete"] = status["stopped_by"] == "max_epochs" and status.get("epochs_done") == max_epochs
json.dump(status, open(out / "status.json", "w"), indent=2)
print(json.dumps(status))
EOF
echo done
