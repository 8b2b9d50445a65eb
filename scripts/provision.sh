#!/usr/bin/env bash
# Installs everything the test suite needs on a Debian 12 machine with Rust, once: the heavy
# parts are cached under ~/.cache/candor-ci/ keyed by version, so a second run only checks.
# Sourced by scripts/test (and, through it, by .ci/run); exports what the tests read:
#   PATH                 the Python environment first (python3 with the `openai` SDK,
#                        `phoenix` for the OpenTelemetry trace test)
#   CANDOR_LLAMA_SERVER  llama.cpp's llama-server, built from PyPI (scripts/llama.sh)
#   CANDOR_LLAMA_MODEL   the Gemma 3 270M GGUF it serves
CANDOR_CACHE="${CANDOR_CACHE:-$HOME/.cache/candor-ci}"
mkdir -p "$CANDOR_CACHE"

# Debian packages: a package is installed only when what the tests run is missing.
need_apt=()
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)        # /metrics and rules checks
command -v prometheus >/dev/null 2>&1 || need_apt+=(prometheus)      # scrapes Candor in a test
[ -x "${CHROMIUM:-/usr/bin/chromium}" ] || need_apt+=(chromium fonts-dejavu-core)  # dashboard test
command -v node >/dev/null 2>&1 || need_apt+=(nodejs)                # ... driven from Node.js
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)            # certificates, TLS test
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need_apt+=(postgresql)  # request log in PostgreSQL
command -v g++ >/dev/null 2>&1 || need_apt+=(g++)                    # builds llama.cpp
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need_apt+=(python3-venv)
if ((${#need_apt[@]})); then
    sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    echo "== installing Debian packages: ${need_apt[*]}"
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
        "${need_apt[@]}" >/dev/null
fi

# One Python environment for the tests' Python parts (the official `openai` SDK, Arize
# Phoenix), every package pinned in tests/sdk/requirements.txt; keyed by that file.
py_key=$(sha256sum tests/sdk/requirements.txt | cut -c1-12)
py_dir="$CANDOR_CACHE/python-$py_key"
if [ ! -e "$py_dir/ready" ]; then
    echo "== Python environment for the tests (tests/sdk/requirements.txt), once per machine"
    rm -rf "$py_dir"
    python3 -m venv "$py_dir"
    "$py_dir/bin/pip" install --quiet --disable-pip-version-check -r tests/sdk/requirements.txt
    touch "$py_dir/ready"
fi
export PATH="$py_dir/bin:$PATH"

# playwright-core drives Debian's chromium (it never downloads a browser); pinned by the lock.
lock_sum=$(sha256sum tests/browser/package-lock.json | cut -c1-64)
if [ "$(cat tests/browser/node_modules/.candor-lock 2>/dev/null)" != "$lock_sum" ]; then
    echo "== npm ci (tests/browser)"
    PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --prefix tests/browser --no-audit --no-fund --silent
    echo "$lock_sum" >tests/browser/node_modules/.candor-lock
fi

# Real inference servers for tests/llama.rs.
# shellcheck source=scripts/llama.sh
source scripts/llama.sh
