#!/usr/bin/env bash
# Install headless Chromium from Debian's packages for the browser test (tests/test_serve_browser.py runs this
# when /usr/bin/chromium is missing). Exits 0 when Chromium is there; otherwise says why it cannot install it.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "no apt-get: Chromium is installed from Debian's packages" >&2
  exit 1
fi
if [ "$(id -u)" != 0 ]; then
  echo "not root: apt-get install chromium needs root" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=120 update -qq
apt-get -o DPkg::Lock::Timeout=120 install -y -qq --no-install-recommends chromium >/dev/null
test -x /usr/bin/chromium
