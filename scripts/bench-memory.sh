#!/usr/bin/env bash
# Peak memory of the streamer (release build) on two workloads, printed:
#   1. a backlog of BACKLOG_FILES small files (default 50 000 × 100 rows);
#   2. one big file of BIG_ROWS rows (default 18 500 000 rows, about 2 GB;
#      it is made here and removed after).
# Uses DATABASE_URL if it answers, else a private cluster (scripts/lib/pg.sh),
# a fresh database per workload, and GNU time for the peak RSS.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/pg.sh
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/ecommerce-pipeline/target}
BACKLOG_FILES=${BACKLOG_FILES:-50000}
BIG_ROWS=${BIG_ROWS:-18500000}

if [ ! -x /usr/bin/time ]; then
    if [ "$(id -u)" -eq 0 ]; then apt-get install -y -qq time >/dev/null; else echo "needs GNU time: sudo apt-get install time" >&2; exit 1; fi
fi
trap stop_postgres EXIT
ensure_postgres bench
cargo build --release --locked -p streamer -p generator
bin="$CARGO_TARGET_DIR/release"
work=$(mktemp -d)
trap 'rm -rf "$work"; stop_postgres' EXIT
psql=$(command -v psql || echo "$PG_BIN_DIR/psql")

measure() { # name data-dir
    local name=$1 data=$2 db="bench_$(date +%s%N)"
    "$psql" "$DATABASE_URL" -qc "CREATE DATABASE $db"
    local url
    url=$(printf '%s' "$DATABASE_URL" | sed -E "s#/[^/?]*(\?|\$)#/$db\1#")
    local files bytes
    files=$(find "$data" -maxdepth 1 -name '*.csv' | wc -l)
    bytes=$(du -sb "$data" | cut -f1)
    /usr/bin/time -f "%M %e %U %S" -o "$work/time" \
        "$bin/streamer" --data-dir "$data" --checkpoint-dir "$work/cp-$name" --database-url "$url" \
        --once --file-settle 0 >/dev/null 2>"$work/log-$name" || { tail -5 "$work/log-$name"; exit 1; }
    read -r rss wall user sys <"$work/time"
    local rows
    rows=$("$psql" "$url" -tAc "SELECT sum(rows_read) FROM load_history")
    printf '%-8s files=%-6s input=%-6s MB rows=%-9s peak_rss=%-5s MB wall=%ss cpu=%ss\n' \
        "$name" "$files" "$((bytes / 1000000))" "$rows" "$((rss / 1024))" "$wall" "$(awk -v u="$user" -v s="$sys" 'BEGIN { print u + s }')"
    "$psql" "$DATABASE_URL" -qc "DROP DATABASE $db WITH (FORCE)"
}

echo "== backlog: $BACKLOG_FILES files"
"$bin/generator" --data-dir "$work/backlog" --files "$BACKLOG_FILES" --rows 100 --interval 0 --seed 1 2>/dev/null
measure backlog "$work/backlog"
rm -rf "$work/backlog"

echo "== one big file: $BIG_ROWS rows"
"$bin/generator" --data-dir "$work/big" --files 1 --rows "$BIG_ROWS" --interval 0 --seed 2 2>/dev/null
measure big "$work/big"
