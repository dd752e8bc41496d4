#!/usr/bin/env bash
# The performance harness: builds the release binaries, finds PostgreSQL
# (DATABASE_URL if it answers, else a private cluster with the server's
# default settings; see scripts/lib/pg.sh), installs matplotlib into the
# tools' virtualenv, then runs bench/bench.py, which measures and writes
# docs/performance_metrics.md and images/bench_*.png (into BENCH_OUT,
# default the repository).
#
#   scripts/bench.sh                                   # the full run, 40-50 min
#   BENCH_QUICK=1 BENCH_OUT=/tmp/b scripts/bench.sh    # small sizes, elsewhere
#   SPARK=0 scripts/bench.sh                           # without the PySpark peer
#
# BENCH_RUNS (default 3) sets the runs per figure; BENCH_AGAIN=backlog,scale_out
# (or latency, spark, restart, replay, citus, table_size: the rows-already-in-the-table part
# of the scaling section) measures those sections again into the last
# run's docs/performance_metrics.json; BENCH_WORK keeps the
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

# The peer: PySpark (from PyPI, into its own virtualenv), a Java runtime and
# PostgreSQL's JDBC driver (Debian's packages). Any of them missing skips it,
# with a message; the rest of the run goes on.
spark_python=""
if [ "${SPARK:-1}" != 0 ]; then
    spark_venv=$HOME/.cache/ecommerce-pipeline/spark-venv
    if { command -v java >/dev/null 2>&1 || apt_install default-jre-headless "java not found"; } &&
        { [ -f /usr/share/java/postgresql.jar ] || apt_install libpostgresql-jdbc-java "PostgreSQL's JDBC driver not found"; } &&
        { [ -x "$spark_venv/bin/python" ] || python3 -m venv "$spark_venv"; } &&
        "$spark_venv/bin/pip" install --quiet --disable-pip-version-check pyspark==4.0.1 'psycopg[binary]==3.2.10' >&2; then
        spark_python=$spark_venv/bin/python
    else
        echo "bench: the PySpark peer cannot be installed here; it is skipped" >&2
    fi
fi

if [ -z "${STREAMER:-}" ] || [ -z "${GENERATOR:-}" ]; then
    cargo build --release --locked -p streamer -p generator
    STREAMER="$CARGO_TARGET_DIR/release/streamer"
    GENERATOR="$CARGO_TARGET_DIR/release/generator"
fi
BENCH_WORK=$work STREAMER=$STREAMER GENERATOR=$GENERATOR SPARK_PYTHON=$spark_python "$TOOLS_BIN/python" bench/bench.py
