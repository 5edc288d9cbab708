#!/usr/bin/env bash
# Installs Debian's headless-capable Chromium at /usr/bin/chromium for the e2e tests
# (tests/test_ui_e2e.py, `just test-all`). Idempotent: does nothing when it is already there.
# Playwright drives this system browser; no `playwright install` download is needed.
set -euo pipefail

if [[ -x /usr/bin/chromium ]] && /usr/bin/chromium --version >/dev/null 2>&1; then
    echo "chromium already installed: $(/usr/bin/chromium --version 2>/dev/null)"
    exit 0
fi

SUDO=()
if [[ "$(id -u)" -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
    else
        echo "install-browser.sh: must run as root (or with sudo available)" >&2
        exit 1
    fi
fi

export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium fonts-liberation

echo "installed: $(/usr/bin/chromium --version 2>/dev/null)"
