#!/usr/bin/env bash
# The performance harness: builds the release binaries, finds PostgreSQL
# (DATABASE_URL if it answers, else a private cluster with the server's
# default settings; see scripts/lib/pg.sh), installs matplotlib into the
# tools' virtualenv, then runs bench/bench.py, which measures and writes
# docs/performance_metrics.md and images/bench_*.png (into BENCH_OUT,
# default the repository).
#
#   scripts/bench.sh                                   # the full run, 20-30 min
#   BENCH_QUICK=1 BENCH_OUT=/tmp/b scripts/bench.sh    # small sizes, elsewhere
#
# BENCH_RUNS (default 3) sets the runs per figure; BENCH_WORK keeps the
# scratch folder (default: a temporary one, removed at the end); STREAMER and
# GENERATOR point at binaries to use instead of building (CI's quick run
# uses the test build).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/pg.sh
source scripts/lib/tools.sh

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/ecommerce-pipeline/target}

work=${BENCH_WORK:-$(mktemp -d "${TMPDIR:-/tmp}/bench.XXXXXX")}
cleanup() {
    stop_postgres
    if [ -z "${BENCH_WORK:-}" ]; then rm -rf "$work"; fi
}
trap cleanup EXIT

ensure_postgres bench
ensure_apt_package psql postgresql-client
ensure_py_tools matplotlib==3.11.2

if [ -z "${STREAMER:-}" ] || [ -z "${GENERATOR:-}" ]; then
    cargo build --release --locked -p streamer -p generator
    STREAMER="$CARGO_TARGET_DIR/release/streamer"
    GENERATOR="$CARGO_TARGET_DIR/release/generator"
fi
BENCH_WORK=$work STREAMER=$STREAMER GENERATOR=$GENERATOR "$TOOLS_BIN/python" bench/bench.py
