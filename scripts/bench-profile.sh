#!/usr/bin/env bash
# Where PostgreSQL's time goes when the streamer loads a backlog: a private
# cluster with pg_stat_statements (the server's default settings otherwise),
# data set A of scripts/bench.sh (400 files x 1 500 rows, event times spread
# over a day, no duplicates) loaded by `streamer --once` with the analytics
# on, then again into a new database with them off, and the same files by
# one `psql \copy` session; for each, the statements by total execution time
# with their share, and the server's whole time (summed over sessions:
# loaders and the applier run at once).
#
#   scripts/bench-profile.sh            # FILES=400 ROWS=1500 by default
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/pg.sh
source scripts/lib/tools.sh

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/ecommerce-pipeline/target}
files=${FILES:-400}
rows=${ROWS:-1500}
work=$(mktemp -d "${TMPDIR:-/tmp}/bench-profile.XXXXXX")
unset DATABASE_URL
trap 'stop_postgres; rm -rf "$work"' EXIT
PG_EXTRA_OPTS="-c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=top \
-c pg_stat_statements.max=1000" ensure_postgres profile
ensure_apt_package psql postgresql-client
admin=$DATABASE_URL

cargo build --release --locked -p streamer -p generator
bin=$CARGO_TARGET_DIR/release
"$bin/generator" --data-dir "$work/data" --files "$files" --rows "$rows" --duplicate-rate 0 --bad-row-rate 0 \
    --seed 11 --start-time 2026-01-01T00:00:00Z --interval 0 --jitter-ms 86400000 2>/dev/null

top() {
    psql -X -q -d "$1" -v ON_ERROR_STOP=1 -P pager=off <<'SQL'
SELECT round(sum(total_exec_time)::numeric / 1000, 2) AS "server s, all statements" FROM pg_stat_statements
WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database());
SELECT round(total_exec_time::numeric / 1000, 2) AS s,
       round((100 * total_exec_time / sum(total_exec_time) OVER ())::numeric, 1) AS "%",
       calls, rows,
       left(regexp_replace(query, '\s+', ' ', 'g'), 110) AS statement
FROM pg_stat_statements
WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
ORDER BY total_exec_time DESC LIMIT 12;
SQL
}

for analytics in true false; do
    db=profile_$analytics
    psql -X -q -d "$admin" -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
    url=${admin%/postgres}/$db
    psql -X -q -d "$url" -c "CREATE EXTENSION pg_stat_statements" -c "SELECT pg_stat_statements_reset()" >/dev/null
    start=$(date +%s.%N)
    "$bin/streamer" --once --file-settle 0 --analytics "$analytics" --data-dir "$work/data" \
        --checkpoint-dir "$work/cp-$analytics" --database-url "$url" 2>"$work/streamer-$analytics.log"
    end=$(date +%s.%N)
    printf '\n== streamer --once, analytics %s: %.2f s wall for %s rows\n' "$analytics" \
        "$(echo "$end - $start" | bc)" "$((files * rows))"
    top "$url"
done

db=profile_copy
psql -X -q -d "$admin" -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
url=${admin%/postgres}/$db
psql -X -q -d "$url" -v ON_ERROR_STOP=1 -f db/001_events.sql >/dev/null
psql -X -q -d "$url" -c "CREATE EXTENSION pg_stat_statements" -c "SELECT pg_stat_statements_reset()" >/dev/null
for f in "$work"/data/*.csv; do
    printf '\\copy events (user_id, user_name, user_email, event_type, product_id, product_name, product_category, product_price, event_time) FROM %s WITH (FORMAT csv, HEADER true)\n' "'$f'"
done >"$work/copy.sql"
start=$(date +%s.%N)
psql -X -q -1 -d "$url" -v ON_ERROR_STOP=1 -f "$work/copy.sql" >/dev/null
end=$(date +%s.%N)
printf '\n== psql \\copy, one transaction: %.2f s wall\n' "$(echo "$end - $start" | bc)"
top "$url"
