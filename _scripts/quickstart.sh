#!/usr/bin/env bash
# One command, end to end on a CPU: set up .venv, build the built-in synthetic dataset, train the small model,
# evaluate FID (trained vs untrained), render an orbit video and export a .ply.
# Environment knobs: QUICKSTART_KIMG (training length), QUICKSTART_OUT (run root), QUICKSTART_DATA (dataset zip).
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
DATA="${QUICKSTART_DATA:-datasets/shapes64.zip}"
if [ ! -f "$DATA" ]; then
    echo "[quickstart] building the built-in synthetic dataset -> $DATA"
    mkdir -p "$(dirname "$DATA")"
    python dataset_tool.py synth --poses ffhq --count 2000 --resolution 64 --seed 0 --dest "$DATA"
else
    echo "[quickstart] dataset $DATA exists; reusing it"
fi
python dataset_tool.py info --source "$DATA"
