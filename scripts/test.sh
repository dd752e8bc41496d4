#!/usr/bin/env bash
# Runs every check CI runs: the compose file against the Compose
# specification's schema and the Dockerfile through hadolint (both installed
# into a private virtualenv on first use; see scripts/lib/tools.sh), the
# Prometheus configuration through promtool, formatting, clippy, the whole
# test suite against a real PostgreSQL (DATABASE_URL if it answers, else a
# private cluster; see scripts/lib/pg.sh; the dashboard's test in headless
# Chromium, Debian's package installed when missing), the compose set-up on a
# real Docker engine when one answers (scripts/compose-test.sh), then the
# benchmark harness in its quick variant (scripts/bench.sh with BENCH_QUICK=1
# and the test build; a few minutes), then that the README's figures are the
# latest full run's (bench/report.py --check-readme). Fails if any step fails.
#
# Long variants (torture, benchmarks) are opt-in by environment variables
# documented in the README.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/pg.sh
source scripts/lib/tools.sh

# Reuse one build cache outside the clone when there is one.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/ecommerce-pipeline/target}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

step() { printf '\n==> %s\n' "$*"; }

if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: install Rust (https://rustup.rs) and run this again" >&2
    exit 1
fi
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt clippy >/dev/null 2>&1 || true

step "PostgreSQL"
trap stop_postgres EXIT
ensure_postgres test fast
echo "tests use DATABASE_URL=$(redact_url "$DATABASE_URL")"

step "deployment files: compose schema, Dockerfile lint, diagrams up to date"
sha256sum --check --quiet images/diagrams.sha256 ||
    { echo "a diagram source changed: run scripts/diagrams.sh and commit the picture" >&2; exit 1; }
ensure_py_tools
"$TOOLS_BIN/check-jsonschema" --builtin-schema vendor.compose-spec docker-compose.yml
"$TOOLS_BIN/hadolint" Dockerfile && echo "hadolint: Dockerfile ok"

ensure_apt_package promtool prometheus
promtool check config --syntax-only deploy/prometheus/prometheus.yml
promtool check rules deploy/prometheus/pipeline.rules.yml
sh -n deploy/entrypoint.sh deploy/postgres/10-grafana-reader.sh

step "Chromium, for the dashboard's browser test"
ensure_apt_package chromium chromium
export CHROMIUM=${CHROMIUM:-$(command -v chromium)}
"$CHROMIUM" --version

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo test"
cargo test --workspace --locked

step "the compose set-up on a real Docker engine"
bash scripts/compose-test.sh

step "benchmark harness, quick variant (the test build, small sizes)"
bench_out=$(mktemp -d "${TMPDIR:-/tmp}/bench-quick.XXXXXX")
BENCH_QUICK=1 BENCH_OUT="$bench_out" STREAMER="$CARGO_TARGET_DIR/debug/streamer" \
    GENERATOR="$CARGO_TARGET_DIR/debug/generator" bash scripts/bench.sh
for f in docs/performance_metrics.md images/bench_throughput.png images/bench_latency.png images/bench_scaling.png; do
    [ -s "$bench_out/$f" ] || { echo "the quick benchmark did not write $f" >&2; exit 1; }
done
rm -rf "$bench_out"

step "the README's figures are those of the latest benchmark run"
python3 bench/report.py --check-readme README.md docs/performance_metrics.json

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo
echo "all checks passed"
