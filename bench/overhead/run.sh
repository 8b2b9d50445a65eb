#!/usr/bin/env bash
# Candor's overhead side by side with a direct hit on the same upstream, nginx as a bare
# reverse proxy (the floor) and LiteLLM, in one run (bench/overhead/run.py does the work and
# prints the tables; docs/benchmarks.md explains them).
#
# Usage: bench/overhead/run.sh [--docs] [run.py options: --rates "500 2000" --seconds 20
#        --rounds 3 --streams 200 --hold-streams 1000 --phases "fixed litellm max streams hold overload"
#        --no-litellm]
#   --docs   also replace the overhead section of docs/benchmarks.md with this run's tables
# Installs what is missing: Debian nginx-light; oha (crates.io) and LiteLLM (PyPI, in a
# virtualenv), both pinned and cached under ~/.cache/candor-ci/.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
DOCS=0
ARGS=()
for a in "$@"; do
    if [[ $a == --docs ]]; then DOCS=1; else ARGS+=("$a"); fi
done

OHA_VERSION=1.16.0
LITELLM_VERSION=1.105.7
CACHE="$HOME/.cache/candor-ci"
OHA="$CACHE/oha-$OHA_VERSION/bin/oha"
LITELLM_VENV="$CACHE/litellm-$LITELLM_VERSION"
need_apt=()
command -v nginx >/dev/null 2>&1 || need_apt+=(nginx-light)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need_apt+=(python3-venv)   # LiteLLM's virtualenv
if ((${#need_apt[@]})); then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
if [[ ! -x "$OHA" ]]; then
    echo "== building oha $OHA_VERSION (once; cached in $CACHE)" >&2
    cargo install oha --version "$OHA_VERSION" --locked --root "$CACHE/oha-$OHA_VERSION" >&2
fi
if [[ ! -x "$LITELLM_VENV/bin/litellm" ]] && [[ " ${ARGS[*]-} " != *" --no-litellm "* ]]; then
    echo "== installing LiteLLM $LITELLM_VERSION into $LITELLM_VENV (once)" >&2
    rm -rf "$LITELLM_VENV"
    python3 -m venv "$LITELLM_VENV"
    "$LITELLM_VENV/bin/pip" install -q "litellm[proxy]==$LITELLM_VERSION" >&2
fi
echo "== building candor and the stream load tool (release)" >&2
cargo build --release --quiet --bin candor --example sseload
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
# 1,000 streams need two sockets each in Candor and one in the client.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

python3 bench/overhead/run.py --candor "$TARGET/release/candor" --sseload "$TARGET/release/examples/sseload" \
    --oha "$OHA" --litellm "$LITELLM_VENV/bin/litellm" --out "$TARGET/overhead" ${ARGS[@]+"${ARGS[@]}"}

if ((DOCS)); then
    python3 - "$TARGET/overhead/report.md" docs/benchmarks.md "$(git rev-parse --short HEAD)" <<'PY'
import datetime, sys
report, docs, rev = sys.argv[1:]
text = open(docs).read()
begin, end = "<!-- overhead:begin -->", "<!-- overhead:end -->"
i, j = text.index(begin) + len(begin), text.index(end)
stamp = f"\nLatest run: {datetime.date.today()}, commit {rev}, `bench/overhead/run.sh --docs`.\n\n"
open(docs, "w").write(text[:i] + stamp + open(report).read() + "\n" + text[j:])
print(f"updated {docs}")
PY
fi
