#!/usr/bin/env bash
# One command, end to end on a CPU, in two parts (about 35 minutes on 2 cores in all):
#  gan:   build the built-in synthetic dataset (2,000 procedural heads at 16x16, the resolution the small `shapes`
#         model is tuned for), train it (~25 minutes), compare the FID of the trained and the untrained generator,
#         then render an orbit video and stills of the 16-px model at 128 px per seed and export a .ply of it;
#  recon: build the built-in multi-view scenes (300 + 40 rooms at 64x64), train the small reconstruction model for a
#         few minutes, evaluate it on the test scenes against the nearest-context baseline, and render a video and
#         a .ply of one reconstructed test scene.
# Knobs (environment): QUICKSTART_PARTS (default "gan,recon"; e.g. "recon" runs only the reconstruction part),
# QUICKSTART_KIMG (GAN training length, default 20), QUICKSTART_OUT (run root), QUICKSTART_DATA (GAN dataset zip),
# QUICKSTART_METRIC (default fid500_full: all 2,000 reals vs 500 generated images), QUICKSTART_SCENES (scene
# dataset folder), QUICKSTART_RECON_MINUTES (reconstruction training budget, default 5).
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
PARTS="${QUICKSTART_PARTS:-gan,recon}"
OUT="${QUICKSTART_OUT:-training-runs/quickstart}"
case ",$PARTS," in *,gan,*|*,recon,*) ;; *) echo "[quickstart] QUICKSTART_PARTS: expected gan, recon or gan,recon, got '$PARTS'" >&2; exit 2;; esac

newest_run() {  # the newest run directory under $1 that is not $2
    local run
    run=$(ls -d "$1"/*/ 2>/dev/null | sort | tail -n 1 || true)
    run="${run%/}"
    if [ -z "$run" ] || [ "$run/" = "$2" ]; then echo "[quickstart] no new run directory in $1" >&2; exit 1; fi
    echo "$run"
}

if [[ ",$PARTS," == *,gan,* ]]; then
DATA="${QUICKSTART_DATA:-datasets/shapes16.zip}"
KIMG="${QUICKSTART_KIMG:-20}"
METRIC="${QUICKSTART_METRIC:-fid500_full}"
GAN_OUT="$OUT/gan"

echo "== gan 1/4 dataset"
if [ ! -f "$DATA" ]; then
    mkdir -p "$(dirname "$DATA")"
    python dataset_tool.py synth --poses ffhq --count 2000 --resolution 16 --seed 0 --dest "$DATA"
else
    echo "[quickstart] $DATA exists; reusing it"
fi
python dataset_tool.py info --source "$DATA"

echo "== gan 2/4 training (${KIMG} kimg of the small 'shapes' model on the CPU)"
mkdir -p "$GAN_OUT"
before=$(ls -d "$GAN_OUT"/*/ 2>/dev/null | sort | tail -n 1 || true)
python train.py --outdir="$GAN_OUT" --cfg=shapes --data="$DATA" --kimg="$KIMG" --metrics=none --seed=0
RUN=$(newest_run "$GAN_OUT" "$before")
# first and latest snapshot in kimg order (names below 1 kimg carry a fraction: network-snapshot-000000.032.pt)
INITIAL=$(python -c 'import sys; from torch_utils.checkpoint import list_snapshots; print(list_snapshots(sys.argv[1])[0])' "$RUN")
FINAL=$(python -c 'import sys; from torch_utils.checkpoint import list_snapshots; print(list_snapshots(sys.argv[1])[-1])' "$RUN")

echo "== gan 3/4 evaluation ($METRIC)"
fid_initial=$(python calc_metrics.py --metrics="$METRIC" --network="$INITIAL" | tail -n 1)
fid_final=$(python calc_metrics.py --metrics="$METRIC" --network="$FINAL" | tail -n 1)

echo "== gan 4/4 orbit video, stills and .ply of the trained model (rendered at 128 px: Gaussians are resolution-free)"
python gen_videos.py --network="$FINAL" --seeds=0-3 --grid=2x2 --trunc=0.7 --frames=120 --nrr=128 --images \
    --outdir="$RUN/videos"

python - "$METRIC" "$fid_initial" "$fid_final" "$RUN" <<'PY'
import glob, json, os, sys
metric, initial, final, run = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4]
a, b = initial["results"][metric], final["results"][metric]
print(f"\n[quickstart] GAN run directory: {run}")
print(f"[quickstart] {metric} of the untrained generator ({os.path.basename(initial['snapshot_pkl'])}): {a:.2f}")
print(f"[quickstart] {metric} of the trained generator ({os.path.basename(final['snapshot_pkl'])}): {b:.2f}"
      f"  (ratio {b / a:.2f})")
grids = [g for g in glob.glob(os.path.join(run, "fakes*.png")) if not g.endswith("_depth.png")]
print(f"[quickstart] latest fakes grid: {max(grids, key=lambda g: float(os.path.basename(g)[5:-4]))}")
for path in sorted(glob.glob(os.path.join(run, "videos", "*.mp4")) + glob.glob(os.path.join(run, "videos", "*.png"))
                   + glob.glob(os.path.join(run, "videos", "*.ply"))):
    print(f"[quickstart] wrote {path}")
PY
fi

if [[ ",$PARTS," == *,recon,* ]]; then
SCENES="${QUICKSTART_SCENES:-datasets/scenes64}"
MINUTES="${QUICKSTART_RECON_MINUTES:-5}"
RECON_OUT="$OUT/recon"

echo "== recon 1/4 scenes"
if [ ! -f "$SCENES/test/index.json" ]; then
    python dataset_tool.py scenes --dest "$SCENES" --seed 0
else
    echo "[quickstart] $SCENES exists; reusing it"
fi

echo "== recon 2/4 training (${MINUTES} minutes of the small reconstruction model on the CPU)"
mkdir -p "$RECON_OUT"
before=$(ls -d "$RECON_OUT"/*/ 2>/dev/null | sort | tail -n 1 || true)
python reconstruct.py train --outdir="$RECON_OUT" --data="$SCENES" --experiment=scenes --minutes="$MINUTES" --seed=0
RUN=$(newest_run "$RECON_OUT" "$before")

echo "== recon 3/4 evaluation on the test scenes (never seen in training)"
summary=$(python reconstruct.py test --network="$RUN" --data="$SCENES" | tail -n 1)

echo "== recon 4/4 video and .ply of one test scene"
python reconstruct.py render --network="$RUN" --data="$SCENES" --index-entry=0 --outdir="$RUN/videos"

python - "$summary" "$RUN" <<'PY'
import glob, json, os, sys
summary, run = json.loads(sys.argv[1]), sys.argv[2]
print(f"\n[quickstart] reconstruction run directory: {run}")
print(f"[quickstart] test scenes: {summary['num_scenes']}, Gaussians per scene {summary['gaussians_per_scene']:,}")
print(f"[quickstart] model:    PSNR {summary['psnr']:.2f} dB  SSIM {summary['ssim']:.3f}  LPIPS {summary['lpips']:.3f}")
print(f"[quickstart] baseline: PSNR {summary['baseline_psnr']:.2f} dB  SSIM {summary['baseline_ssim']:.3f}  "
      f"LPIPS {summary['baseline_lpips']:.3f}  (the nearer context image, unchanged)")
print(f"[quickstart] PSNR gain over the baseline: {summary['psnr'] - summary['baseline_psnr']:+.2f} dB")
for path in sorted(glob.glob(os.path.join(run, "videos", "*"))):
    print(f"[quickstart] wrote {path}")
PY
fi
