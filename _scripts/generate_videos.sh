#!/bin/sh
# Orbit videos and a .ply per seed of a trained generator, like the official GSGAN _scripts/generate_videos.sh:
# set network_pkl (edit the line below, or set it in the environment) and run
# `sh _scripts/generate_videos.sh [more gen_videos.py options]`. Variables (the official names first):
#   network_pkl   a snapshot (network-snapshot-*.pt) or a run directory (its latest snapshot)
#   resolution    render resolution, --nrr [default: 256]
#   trunc         truncation psi [default: 0.7]
#   seeds         e.g. 0-3 [default: 0-3]
#   opacity_ones  True/False: foreground fully opaque [default: False]
#   grid          COLSxROWS [default: 2x2]
#   outdir        output folder [default: out]
#   backend       rasterizer: auto, reference, cpu, gsplat, inria [default: auto]
set -eu
network_pkl="${network_pkl:-}"   # e.g. training-runs/00000-ffhq-FFHQ_256-gpus4-batch32/network-snapshot-015000.pt
resolution="${resolution:-256}"
trunc="${trunc:-0.7}"
seeds="${seeds:-0-3}"
opacity_ones="${opacity_ones:-False}"
grid="${grid:-2x2}"
outdir="${outdir:-out}"
backend="${backend:-auto}"
if [ -z "$network_pkl" ]; then
    echo "generate_videos.sh: set network_pkl to a snapshot or run directory (edit the script or:" \
         "network_pkl=PATH sh $0)" >&2
    exit 2
fi
case "$opacity_ones" in
    True|true|1) set -- --opacity_ones "$@" ;;
    False|false|0) ;;
    *) echo "generate_videos.sh: opacity_ones must be True or False, got '$opacity_ones'" >&2; exit 2 ;;
esac
repo="$(cd "$(dirname "$0")/.." && pwd)"  # paths stay relative to where you run it
exec python "$repo/gen_videos.py" --outdir="$outdir" --trunc="$trunc" --seeds="$seeds" --grid="$grid" \
    --network="$network_pkl" --image_mode=image --nrr="$resolution" --backend="$backend" "$@"
