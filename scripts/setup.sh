#!/usr/bin/env bash
# Installs everything ssl-aver needs on a fresh Debian machine: system packages, a virtual
# environment, and the toolkit with its test extras. Safe to re-run.
set -euo pipefail
venv="${1:-.venv}"

need=()
for tool in ffmpeg espeak-ng sox; do command -v "$tool" >/dev/null 2>&1 || need+=("$tool"); done
if [ "${#need[@]}" -gt 0 ]; then
    echo "installing system packages: ${need[*]}"
    sudo_cmd=""; [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq ffmpeg espeak-ng sox libsndfile1 >/dev/null
fi

[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip setuptools wheel
# torch first and pinned: a looser resolve could pull a multi-GB newer CUDA wheel.
"$venv/bin/python" -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
"$venv/bin/python" -m pip install -q -e ".[test]"
