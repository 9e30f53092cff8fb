#!/usr/bin/env bash
# Set up .venv (if needed) and run the whole test suite.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
python -m pytest -q "$@"
