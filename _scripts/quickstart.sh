#!/usr/bin/env bash
# One command, end to end on a CPU: set up .venv, build the built-in synthetic dataset (2,000 procedural heads at
# 16x16, the resolution the small `shapes` model is tuned for), train it (~25 minutes on 2 cores), compare the FID of
# the trained and the untrained generator, then render an orbit video and export a .ply of the trained model.
# Knobs (environment): QUICKSTART_KIMG (training length, default 20), QUICKSTART_OUT (run root),
# QUICKSTART_DATA (dataset zip), QUICKSTART_METRIC (default fid500_full: all 2,000 reals vs 500 generated images).
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
DATA="${QUICKSTART_DATA:-datasets/shapes16.zip}"
OUT="${QUICKSTART_OUT:-training-runs/quickstart}"
KIMG="${QUICKSTART_KIMG:-20}"
METRIC="${QUICKSTART_METRIC:-fid500_full}"

echo "== 1/4 dataset"
if [ ! -f "$DATA" ]; then
    mkdir -p "$(dirname "$DATA")"
    python dataset_tool.py synth --poses ffhq --count 2000 --resolution 16 --seed 0 --dest "$DATA"
else
    echo "[quickstart] $DATA exists; reusing it"
fi
python dataset_tool.py info --source "$DATA"

echo "== 2/4 training (${KIMG} kimg of the small 'shapes' model on the CPU)"
mkdir -p "$OUT"
before=$(ls -d "$OUT"/*/ 2>/dev/null | sort | tail -n 1 || true)
python train.py --outdir="$OUT" --cfg=shapes --data="$DATA" --kimg="$KIMG" --metrics=none --seed=0
RUN=$(ls -d "$OUT"/*/ | sort | tail -n 1)
RUN="${RUN%/}"
if [ "$RUN/" = "$before" ] || [ -z "$RUN" ]; then echo "[quickstart] no new run directory in $OUT" >&2; exit 1; fi
INITIAL="$RUN/network-snapshot-000000.pt"
FINAL=$(ls "$RUN"/network-snapshot-*.pt | sort | tail -n 1)

echo "== 3/4 evaluation ($METRIC)"
fid_initial=$(python calc_metrics.py --metrics="$METRIC" --network="$INITIAL" | tail -n 1)
fid_final=$(python calc_metrics.py --metrics="$METRIC" --network="$FINAL" | tail -n 1)

echo "== 4/4 orbit video and .ply of the trained model"
python gen_videos.py --network="$FINAL" --seeds=0-3 --grid=2x2 --trunc=0.7 --frames=120 --outdir="$RUN/videos"

python - "$METRIC" "$fid_initial" "$fid_final" "$RUN" <<'PY'
import glob, json, os, sys
metric, initial, final, run = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4]
a, b = initial["results"][metric], final["results"][metric]
print(f"\n[quickstart] run directory: {run}")
print(f"[quickstart] {metric} of the untrained generator (network-snapshot-000000.pt): {a:.2f}")
print(f"[quickstart] {metric} of the trained generator ({os.path.basename(final['snapshot_pkl'])}): {b:.2f}"
      f"  (ratio {b / a:.2f})")
grids = sorted(glob.glob(os.path.join(run, "fakes*.png")))
print(f"[quickstart] latest fakes grid: {[g for g in grids if not g.endswith('_depth.png')][-1]}")
for path in sorted(glob.glob(os.path.join(run, "videos", "*.mp4")) + glob.glob(os.path.join(run, "videos", "*.ply"))):
    print(f"[quickstart] wrote {path}")
PY
