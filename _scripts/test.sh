#!/usr/bin/env bash
# Set up .venv (if needed) and run the whole test suite.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
# The viewer's browser test needs Debian's Chromium; CI (root, CI=true) installs it, elsewhere the test skips.
if [ "${CI:-}" = "true" ] && ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[setup] installing Debian chromium for the viewer's browser test"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
        || echo "[setup] could not install chromium; the browser test will skip"
fi
python -m pytest -q "$@"
