#!/usr/bin/env bash
# The compose set-up on a real Docker engine, as a new user meets it: builds
# the image from the real Dockerfile, then in a fresh copy of the repository
# whose ./data and ./checkpoints belong to a non-root host user (uid 1000),
# and once more as root:
#   - postgres, streamer and generator come up healthy (no crash loop);
#   - the generator's files are in `events` within seconds, and the files in
#     ./data still belong to the host user;
#   - /health answers 200 and /metrics answers, from the host's ports;
#   - `docker compose stop` exits 0 with the batch in flight committed or
#     rolled back (the streamer logs its clean stop, exit code 0);
#   - `docker compose up` again resumes, no file loaded twice;
#   - the streamer crashing (its process killed inside the container) is
#     restarted by the restart policy, and after `docker kill -s KILL`
#     (which disables the policy until the next start) started again; the
#     oracle holds (`streamer verify` compares events with the files);
#   - `docker compose down -v` then `up`: the files still in ./data are
#     loaded into the new database, and the streamer says why;
# and the image's own layers on top of the base stay within 50 MB; then the
# profile `citus` (a coordinator and two workers, citus-setup joining them):
# the streamer distributes `events` over both workers itself, the
# generator's files load, `streamer verify` agrees. The profile uses the
# official citusdata/citus:13.2 image; with no registry (this workplace), a
# local stand-in is built from the postgres:15 image and the host's Citus
# build (../shared/tools/citus.sh), else that part is skipped with a message.
#
# Needs a Docker engine with Compose v2 (.ci/run prepares one with
# ../shared/tools/docker-offline.sh). Every wait is bounded; on failure the
# containers' logs are printed. Prints its wall time.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
started=$SECONDS

if ! docker info >/dev/null 2>&1 || ! docker compose version >/dev/null 2>&1; then
    echo "compose test: no Docker engine with Compose v2 here; skipped" >&2
    exit 0
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/compose-test.XXXXXX")
chmod 755 "$work"
projects=()
cleanup() {
    local status=$?
    for p in "${projects[@]}"; do
        if [ "$status" -ne 0 ]; then
            echo "---- logs of $p ----" >&2
            (cd "$work/$p" && docker compose -p "$p" --profile citus logs --no-color --tail 80 >&2) || true
        fi
        (cd "$work/$p" && docker compose -p "$p" --profile citus down -v --remove-orphans >/dev/null 2>&1) || true
    done
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT

say() { printf '[compose-test %3ds] %s\n' $((SECONDS - started)) "$*"; }
fail() { echo "compose test FAILED: $*" >&2; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# waits up to $1 seconds for the command to succeed
wait_for() {
    local limit=$1; shift
    local deadline=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || return 1
        sleep 1
    done
}

if [ "${COMPOSE_TEST_REUSE_IMAGE:-}" = 1 ] && docker image inspect ecommerce-pipeline:latest >/dev/null 2>&1; then
    say "reusing the image ecommerce-pipeline:latest (COMPOSE_TEST_REUSE_IMAGE=1)"
else
    say "building the image from the Dockerfile"
    docker build --network host -q -t ecommerce-pipeline:latest . >/dev/null
fi

base=$(docker image inspect -f '{{.Size}}' debian:bookworm-slim)
image=$(docker image inspect -f '{{.Size}}' ecommerce-pipeline:latest)
added=$(( (image - base) / 1000000 ))
say "the image adds $added MB to debian:bookworm-slim (goal: 50 MB)"
docker history --format '  {{.Size}}\t{{.CreatedBy}}' ecommerce-pipeline:latest | head -n 8
[ "$added" -le 50 ] || fail "the image's own layers are $added MB, more than 50 MB"

run_as() {
    local owner=$1 p="pipe_$1_$$"
    projects+=("$p")
    local dir="$work/$p"
    mkdir -p "$dir"
    # A fresh copy of the repository: its tracked files, as a clone has them.
    git -C "$repo" ls-files -z | tar -C "$repo" --null -T - -c | tar -C "$dir" -x
    chown -R "$owner:$owner" "$dir"
    local pg_port http_port
    pg_port=$(free_port); http_port=$(free_port)
    cat >"$dir/.env" <<EOF
POSTGRES_PORT=$pg_port
HTTP_PORT=$http_port
SLEEP_INTERVAL=0.5
MIN_EVENTS=50
MAX_EVENTS=300
DUPLICATE_RATE=0.1
EOF
    cd "$dir"
    local compose=(docker compose -p "$p")
    local url="postgres://pipeline:pipeline@127.0.0.1:$pg_port/ecommerce"
    sql() { psql "$url" -qtAX -c "$1"; }
    files_in_data() { find data -maxdepth 1 -name '*.csv' | wc -l; }
    healthy() {
        [ "$("${compose[@]}" ps --format '{{.Health}}' "$1" 2>/dev/null)" = healthy ]
    }
    loaded_at_least() { [ "$(sql 'SELECT count(*) FROM load_history' 2>/dev/null || echo 0)" -ge "$1" ]; }
    all_loaded() {
        local n; n=$(files_in_data)
        [ "$(sql "SELECT count(*) FROM load_history WHERE status = 'loaded'" 2>/dev/null || echo -1)" -eq "$n" ]
    }

    say "owner $owner: up (postgres, streamer, generator)"
    "${compose[@]}" up -d --no-build postgres streamer generator >/dev/null 2>&1 || fail "compose up"
    wait_for 120 healthy postgres || fail "postgres is not healthy"
    wait_for 120 healthy streamer || fail "the streamer is not healthy"
    wait_for 60 loaded_at_least 3 || fail "the generator's files are not in events"
    local others
    others=$(find data checkpoints -mindepth 1 ! -user "$owner" | head -n 3)
    [ -z "$others" ] || fail "files not owned by $owner: $others"
    wait_for 10 curl -fsS "http://127.0.0.1:$http_port/health" || fail "/health is not 200"
    # (grep -q reads its input from a variable: in a pipe it could end the
    # writer early, and pipefail would call that a failure.)
    grep -q '^streamer_batches_total{outcome="committed"}' <<<"$(curl -fsS "http://127.0.0.1:$http_port/metrics")" \
        || fail "/metrics does not answer"

    say "owner $owner: stop, with batches in flight"
    "${compose[@]}" stop >/dev/null 2>&1 || fail "docker compose stop"
    [ "$(docker inspect -f '{{.State.ExitCode}}' "$("${compose[@]}" ps -aq streamer)")" = 0 ] \
        || fail "the streamer did not exit 0 on stop"
    grep -q 'streamer stopped' <<<"$("${compose[@]}" logs --no-color streamer)" || fail "no clean stop in the log"

    say "owner $owner: up again"
    "${compose[@]}" up -d --no-build postgres streamer generator >/dev/null 2>&1 || fail "compose up again"
    wait_for 120 healthy postgres || fail "postgres is not healthy again"
    local before; before=$(sql 'SELECT count(*) FROM load_history')
    wait_for 60 loaded_at_least $((before + 3)) || fail "the stream did not resume"
    [ "$(sql 'SELECT count(*) - count(DISTINCT file_name) FROM load_history')" = 0 ] || fail "a file was loaded twice"

    say "owner $owner: the streamer crashes, then is killed"
    "${compose[@]}" exec -T streamer sh -c \
        'for p in /proc/[0-9]*; do [ "$(cat $p/comm 2>/dev/null)" = streamer ] && kill -KILL ${p#/proc/}; done' || true
    wait_for 60 healthy streamer || fail "the crashed streamer was not restarted"
    docker kill -s KILL "$("${compose[@]}" ps -q streamer)" >/dev/null
    "${compose[@]}" start streamer >/dev/null 2>&1 || fail "starting the killed streamer"
    wait_for 60 healthy streamer || fail "the killed streamer did not come back"
    "${compose[@]}" stop generator >/dev/null 2>&1
    wait_for 60 all_loaded || fail "not every file was loaded ($(files_in_data) in data)"
    "${compose[@]}" exec -T streamer streamer verify >"$work/verify-$owner.txt" 2>&1 \
        || { cat "$work/verify-$owner.txt" >&2; fail "events differs from the files"; }
    grep -q ' 0 differing, 0 missing' "$work/verify-$owner.txt" || fail "verify: $(cat "$work/verify-$owner.txt")"

    say "owner $owner: down -v (the database goes, ./data and ./checkpoints stay), then up"
    local files; files=$(files_in_data)
    "${compose[@]}" down -v >/dev/null 2>&1
    "${compose[@]}" up -d --no-build postgres streamer >/dev/null 2>&1 || fail "compose up after down -v"
    wait_for 120 healthy streamer || fail "the streamer is not healthy after down -v"
    wait_for 60 loaded_at_least "$files" || fail "the files in ./data were not loaded into the new database"
    grep -q 'committed batches this database does not have' <<<"$("${compose[@]}" logs --no-color streamer)" \
        || fail "the streamer did not say why it loads everything again"
    "${compose[@]}" down -v >/dev/null 2>&1
    cd "$repo"
    say "owner $owner: passed ($files files)"
}

# A stand-in for citusdata/citus:13.2 when the registry cannot be reached:
# postgres:15 with the host's PostgreSQL 15 server files (the minor version
# the host's Citus build was made for) and its Citus, preloaded.
citus_image() {
    docker image inspect citusdata/citus:13.2 >/dev/null 2>&1 && return 0
    local server=/usr/lib/postgresql/15 share=/usr/share/postgresql/15
    [ -f "$server/lib/citus.so" ] && docker image inspect postgres:15 >/dev/null 2>&1 || return 1
    local ctx="$work/citus-image"
    mkdir -p "$ctx"
    cp -a "$server" "$ctx/server"
    cp -a "$share" "$ctx/share"
    echo "shared_preload_libraries = 'citus'" >>"$ctx/share/postgresql.conf.sample"
    # (HOME: the stand-in's entrypoint keeps root's, where libpq inside the
    # server would look for client certificates; the official image's is the
    # postgres user's.)
    printf '%s\n' 'FROM postgres:15' 'COPY server/ /usr/lib/postgresql/15/' 'COPY share/ /usr/share/postgresql/15/' \
        'ENV HOME=/var/lib/postgresql' >"$ctx/Dockerfile"
    say "citus: no citusdata/citus:13.2 here; building a stand-in from postgres:15 and the host's PostgreSQL and Citus"
    docker build --network host -q -t citusdata/citus:13.2 "$ctx" >/dev/null
}

run_citus() {
    local p="pipe_citus_$$"
    projects+=("$p")
    local dir="$work/$p"
    mkdir -p "$dir"
    git -C "$repo" ls-files -z | tar -C "$repo" --null -T - -c | tar -C "$dir" -x
    local pg_port http_port citus_port
    pg_port=$(free_port); http_port=$(free_port); citus_port=$(free_port)
    printf '%s\n' "POSTGRES_PORT=$pg_port" "HTTP_PORT=$http_port" "CITUS_PORT=$citus_port" \
        DATABASE_HOST=citus-coordinator SLEEP_INTERVAL=0.5 MIN_EVENTS=50 MAX_EVENTS=300 DUPLICATE_RATE=0.1 \
        >"$dir/.env"
    cd "$dir"
    local compose=(docker compose -p "$p" --profile citus)
    local url="postgres://pipeline:pipeline@127.0.0.1:$citus_port/ecommerce"
    sql() { psql "$url" -qtAX -c "$1"; }
    files_in_data() { find data -maxdepth 1 -name '*.csv' | wc -l; }
    healthy() { [ "$("${compose[@]}" ps --format '{{.Health}}' "$1" 2>/dev/null)" = healthy ]; }
    loaded_at_least() { [ "$(sql 'SELECT count(*) FROM load_history' 2>/dev/null || echo 0)" -ge "$1" ]; }
    all_loaded() {
        local n; n=$(files_in_data)
        [ "$(sql "SELECT count(*) FROM load_history WHERE status = 'loaded'" 2>/dev/null || echo -1)" -eq "$n" ]
    }
    say "citus: up (a coordinator, two workers, citus-setup, streamer, generator)"
    "${compose[@]}" up -d --no-build citus-coordinator citus-worker-1 citus-worker-2 citus-setup postgres streamer \
        generator >/dev/null 2>&1 || fail "compose --profile citus up"
    wait_for 180 healthy streamer || fail "the streamer is not healthy on Citus"
    wait_for 60 loaded_at_least 3 || fail "the generator's files are not in the distributed events"
    grep -q 'now distributed by user_id' <<<"$("${compose[@]}" logs --no-color streamer)" \
        || fail "the streamer did not say it distributed the tables"
    [ "$(sql "SELECT count(*) FROM pg_dist_partition WHERE logicalrelid = 'events'::regclass")" = 1 ] \
        || fail "events is not distributed"
    [ "$(sql "SELECT count(DISTINCT nodename) FROM citus_shards WHERE table_name = 'events'::regclass")" = 2 ] \
        || fail "events' shards are not on both workers"
    "${compose[@]}" stop generator >/dev/null 2>&1
    wait_for 60 all_loaded || fail "not every file was loaded into Citus ($(files_in_data) in data)"
    "${compose[@]}" exec -T streamer streamer verify >"$work/verify-citus.txt" 2>&1 \
        || { cat "$work/verify-citus.txt" >&2; fail "events on Citus differs from the files"; }
    grep -q ' 0 differing, 0 missing' "$work/verify-citus.txt" || fail "verify: $(cat "$work/verify-citus.txt")"
    local files; files=$(files_in_data)
    "${compose[@]}" down -v >/dev/null 2>&1
    cd "$repo"
    say "citus: passed ($files files over two workers)"
}

run_as 1000
run_as 0
if citus_image; then
    run_citus
else
    say "citus: skipped (no citusdata/citus:13.2 image, and no host Citus build for a stand-in: ../shared/tools/citus.sh)"
fi
say "compose test passed in $((SECONDS - started)) s"
