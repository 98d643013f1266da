#!/bin/sh
# System packages that the test suite and the demo need on Debian/Ubuntu:
#   xvfb xauth xdotool - a virtual display and real X key events for the tests
#   libjack-jackd2-0   - psychtoolbox (PsychoPy's clock and keyboard) links against libjack
#   libgl1 libglu1-mesa libegl1 - OpenGL for PsychoPy's window under Xvfb
#   python3-venv       - `python3 -m venv` on Debian
#   chromium fonts-liberation - a real browser for tests/test_study.py: the study page is opened
#                        in Debian's chromium through Playwright (pip package in the test extra),
#                        which drives it with executable_path=/usr/bin/chromium; Playwright's own
#                        browser download is never used. The fonts render the page's text.
#                        (On Ubuntu, `chromium` is a snap wrapper; the test also looks for
#                        chromium-browser on the PATH.)
# As root, missing packages are installed with apt-get; otherwise we say what is missing.
set -u
PKGS="xvfb xauth xdotool libjack-jackd2-0 libgl1 libglu1-mesa libegl1 python3-venv chromium fonts-liberation"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-system-deps: not a Debian/Ubuntu system; please install the equivalents of:$missing" >&2
  exit 0
fi
if [ "$(id -u)" = "0" ]; then
  echo "install-system-deps: installing$missing"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null && \
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null || {
    echo "install-system-deps: apt-get failed for:$missing" >&2; exit 1; }
else
  echo "install-system-deps: missing system packages:$missing" >&2
  echo "  run: sudo apt-get install$missing" >&2
  exit 1
fi
