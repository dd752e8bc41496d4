#!/usr/bin/env bash
# Runs the pipeline on this machine: makes sure PostgreSQL is reachable
# (DATABASE_URL, else a private cluster; see scripts/lib/pg.sh), builds the
# release binaries, and runs the generator. Ctrl-C stops everything cleanly.
#
# Settings come from .env (see .env.example), the environment, then the
# arguments, which are passed to the generator.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/pg.sh

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/ecommerce-pipeline/target}
if [ -f .env ]; then set -a; source .env; set +a; fi

ensure_postgres run
DATABASE_URL=$(create_database "$DATABASE_URL" ecommerce)
export DATABASE_URL
echo "PostgreSQL: ${DATABASE_URL//:*@/:***@}  (psql \"$DATABASE_URL\")"

cargo build --release --locked -p generator
bin="$CARGO_TARGET_DIR/release"

pids=()
stop() {
    trap - INT TERM
    echo "stopping..."
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait
}
trap stop INT TERM

"$bin/generator" "$@" &
pids+=($!)
wait
