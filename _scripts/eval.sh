#!/bin/sh
# FID of a trained generator, like the official GSGAN _scripts/eval.sh: set network_pkl (edit the line below, or
# set it in the environment) and run `sh _scripts/eval.sh [more calc_metrics.py options]`.
#   network_pkl   a snapshot (network-snapshot-*.pt) or a run directory (its latest snapshot)
#   dataset_path  dataset zip/folder [default: the one the snapshot was trained on]
#   metrics       comma-separated metric names [default: fid50k_full]
#   backend       rasterizer: auto, reference, cpu, gsplat, inria [default: auto]
set -eu
network_pkl="${network_pkl:-}"   # e.g. training-runs/00000-ffhq-FFHQ_256-gpus4-batch32/network-snapshot-015000.pt
dataset_path="${dataset_path:-}"
metrics="${metrics:-fid50k_full}"
backend="${backend:-auto}"
if [ -z "$network_pkl" ]; then
    echo "eval.sh: set network_pkl to a snapshot or run directory (edit the script or: network_pkl=PATH sh $0)" >&2
    exit 2
fi
repo="$(cd "$(dirname "$0")/.." && pwd)"  # paths stay relative to where you run it
if [ -n "$dataset_path" ]; then
    set -- --data="$dataset_path" "$@"
fi
exec python "$repo/calc_metrics.py" --metrics="$metrics" --network="$network_pkl" --backend="$backend" "$@"
