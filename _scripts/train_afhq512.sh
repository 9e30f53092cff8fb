#!/usr/bin/env bash
# Official GSGAN AFHQ 512x512 training configuration (docs/official-release.md): 8 GPUs, batch 32, 15000 kimg.
# Usage: DATA=/path/to/afhq_512.zip bash _scripts/train_afhq512.sh [more train.py options, e.g. --dry-run]
set -euo pipefail
DATA="${DATA:-datasets/AFHQ_512.zip}"
OUTDIR="${OUTDIR:-training-runs}"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python train.py --outdir="$OUTDIR" --cfg=afhq --data="$DATA" --gpus=8 --batch=32 --gamma=1 \
    --gen_pose_cond=True --neural_rendering_resolution_initial=512 --metrics=fid2k_full --blur_fade_kimg=200 \
    --kimg=15000 --gaussian_num_pts=256 --start_pe=True --gpc_reg_prob=0.8 --center_dists=10.0 \
    --prob_uniform=0.0 --res_end=256 --aug=ada "$@"
