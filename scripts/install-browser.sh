#!/usr/bin/env bash
# The browser tests/test_ui.py drives through Playwright: the system's chromium, never one of
# Playwright's own downloads. Installs Debian's `chromium` package when none is on PATH (as root,
# or through sudo); safe to run twice.
set -euo pipefail
for name in chromium chromium-browser; do
  if command -v "$name" >/dev/null 2>&1; then
    echo "chromium ready: $(command -v "$name")"
    exit 0
  fi
done
if ! command -v apt-get >/dev/null 2>&1; then
  echo "no chromium on PATH, and no apt-get to install it: install your system's chromium package" >&2
  echo "(the web page tests, tests/test_ui.py, need it)" >&2
  exit 1
fi
if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1; then
  as_root=(sudo)
else
  echo "no chromium on PATH: run 'apt-get install -y chromium' as root (the web page tests need it)" >&2
  exit 1
fi
echo "installing Debian's chromium for the web page tests (tests/test_ui.py)"
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
echo "chromium ready: $(command -v chromium)"
