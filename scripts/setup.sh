#!/usr/bin/env bash
# Set up captioner on a fresh machine: a virtual environment in .venv with the package
# (editable) and its extras. With --test, also the system packages the tests use:
# Java (coco-caption's METEOR and PTB tokenizer, the metrics oracle), Chromium + ChromeDriver
# (the web-page test), the Noto emoji font and Unicode emoji names (the emoji dataset builder).
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

if [ "$want_test" = 1 ]; then
  missing=()
  command -v java >/dev/null || missing+=(default-jre-headless)
  command -v chromium >/dev/null || missing+=(chromium)
  command -v chromedriver >/dev/null || missing+=(chromium-driver)
  [ -f /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ] || missing+=(fonts-noto-color-emoji)
  [ -f /usr/share/unicode/emoji/emoji-test.txt ] || missing+=(unicode-data)
  ldconfig -p | grep -q libcairo.so.2 || missing+=(libcairo2)
  if [ ${#missing[@]} -gt 0 ]; then
    sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
extras="serve,emoji"
[ "$want_test" = 1 ] && extras="serve,emoji,java-metrics,onnx,ray,test"
.venv/bin/python -m pip install -q -e ".[${extras}]"
echo "captioner is set up in .venv (extras: ${extras})"
