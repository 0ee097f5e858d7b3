#!/usr/bin/env bash
# The official CSDI PhysioNet checkpoint on the FULL fold-0 test set (799 records) of set-a, 100 DDPM-50 samples per
# record, at 10%, 50% and 90% held out (issue 15, item 3), on one GPU. Nothing is trained. The device machine has no
# network: the data and the checkpoint travel with the working tree (ignored paths passed as `carry`):
#
#   mkdir -p .gpu_inputs && cp ../shared/data/physionet2012/set-a.tar.gz .gpu_inputs/ \
#     && cp CSDI/save/pretrained/model.pth .gpu_inputs/   # sha256 9acb4ee8..., checked on load
#   OUT=gpu_out bash benchmarks/scripts/gpu_official_checkpoint.sh          # carry: [".gpu_inputs"]
#
# Each ratio writes $OUT/ratio_<r>/{records.jsonl,summary.json,args.json} (resumable: rerun to continue) and its
# log. CPU smoke run (a few seconds of sampling): DEVICE=cpu RECORDS=2 SAMPLES=2 ARGS="--sampler dpmpp --steps 2"
# RATIOS=0.1 BATCH=2 bash benchmarks/scripts/gpu_official_checkpoint.sh
# Not yet run on a GPU (none was lent to the session that wrote it): size BATCH and RECORDS on the first call.
set -u
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
DATA=${DATA:-.gpu_inputs/set-a.tar.gz}
CKPT=${CKPT:-.gpu_inputs/model.pth}
DEVICE=${DEVICE:-cuda}
RECORDS=${RECORDS:-799}
SAMPLES=${SAMPLES:-100}
BATCH=${BATCH:-32}            # records per sampler call: 32 x 100 = 3200 rows of 48 x 35
RATIOS=${RATIOS:-0.1 0.5 0.9}
LIMIT=${LIMIT:-540}           # seconds for all ratios together, so that the summaries come back
PY=${PY:-python3}
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')" > "$OUT/env.txt" 2>&1
date -u +%FT%TZ >> "$OUT/env.txt"
end=$(( $(date +%s) + LIMIT ))
for r in $RATIOS; do
  left=$(( end - $(date +%s) )); [ "$left" -le 5 ] && break
  # shellcheck disable=SC2086
  timeout "$left" $PY benchmarks/reference/eval_official_checkpoint.py --data "$DATA" --checkpoint "$CKPT" \
    --out "$OUT/ratio_$r" --missing-ratio "$r" --records "$RECORDS" --samples "$SAMPLES" --device "$DEVICE" \
    --batch-records "$BATCH" --threads 4 --cache-dir "$OUT/cache" ${ARGS:-} > "$OUT/ratio_$r.log" 2>&1
  echo "ratio $r: $(cat "$OUT/ratio_$r/summary.json" 2>/dev/null | tr -d '\n ')"
done
rm -rf "$OUT/cache"
date -u +%FT%TZ >> "$OUT/env.txt"
echo done
