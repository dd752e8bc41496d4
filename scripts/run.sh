#!/usr/bin/env bash
# Runs the whole pipeline on this machine: makes sure PostgreSQL is reachable
# (DATABASE_URL if it answers, else a private cluster; see scripts/lib/pg.sh),
# builds the release binaries, then runs the streamer and the generator side
# by side. Ctrl-C (or SIGTERM) stops both cleanly (the streamer commits or
# rolls back its batch in flight), then the private cluster if it started one;
# its data stays in .pg/run for the next run.
#
# Settings come from .env (see .env.example), then the environment.
# Arguments go to the generator, e.g. `scripts/run.sh --interval 1`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/pg.sh

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/ecommerce-pipeline/target}
if [ -f .env ]; then set -a; source .env; set +a; fi

trap stop_postgres EXIT
ensure_postgres run
DATABASE_URL=$(create_database "$DATABASE_URL" ecommerce)
export DATABASE_URL
echo "PostgreSQL: $(redact_url "$DATABASE_URL")"
echo "query it:   psql \"$DATABASE_URL\" -c 'SELECT count(*) FROM events'"

if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: install Rust (https://rustup.rs) and run this again" >&2
    exit 1
fi
cargo build --release --locked -p streamer -p generator
bin="$CARGO_TARGET_DIR/release"

pids=()
stop() {
    trap - INT TERM
    echo "stopping the generator and the streamer..."
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait
    exit 0
}
trap stop INT TERM

"$bin/streamer" &
pids+=($!)
# Start the generator once the streamer watches the folder (its checkpoint
# exists), so that even the first file is picked up by its rename event.
for _ in $(seq 50); do
    [ -f "${CHECKPOINT_DIR:-./checkpoints}/metadata" ] && break
    kill -0 "${pids[0]}" 2>/dev/null || break
    sleep 0.1
done
sleep 0.2
"$bin/generator" "$@" &
pids+=($!)
# Either one ending (an error, or --files reached) leaves the other running
# until Ctrl-C; a failing streamer stops the run.
wait -n "${pids[0]}" || { echo "the streamer stopped with an error" >&2; stop; }
wait
