#!/usr/bin/env bash
# The routing benchmark: runs scenarios/routing.toml once per routing policy (Candor's,
# round robin, least busy, LiteLLM-style error cooldown) on loopback simulators and prints
# the share of requests within the targets, errors, requests lost and latency percentiles,
# overall and per fault window. About 4 minutes per policy.
#
#   bench/routing/run.sh [--policies candor,round_robin,least_busy,error_cooldown] [--json]
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/candor-ci/target}"
cargo build --release --locked --quiet
exec "$CARGO_TARGET_DIR/release/candor" scenario compare scenarios/routing.toml "$@"
