# shellcheck shell=bash
# Makes sure a PostgreSQL server is reachable and exports DATABASE_URL.
#
#   ensure_postgres NAME [fast]
#
# 1. DATABASE_URL, if it is set and the server answers, is used as it is.
# 2. Otherwise a private cluster NAME is started (or reused) from the
#    installed PostgreSQL binaries, in the git-ignored folder .pg/NAME, on a
#    free port, owned by the `postgres` OS user when run as root.
# 3. With no PostgreSQL binaries installed: as root they are installed with
#    apt-get; otherwise the command to run is printed and the script fails.
#
# "fast" turns fsync off in the private cluster (for tests only).
# stop_postgres stops the private cluster if this script started it (call it
# on exit); a cluster that was already running, or DATABASE_URL, is left alone.
# Also exports PG_BIN_DIR: the server binaries, for tests that start their
# own throwaway clusters.

pg_log() { printf '[pg] %s\n' "$*" >&2; }

# redact_url URL: the URL with its password, if any, replaced by ***.
redact_url() { printf '%s\n' "$1" | sed -E 's#(://[^:/@]*):[^@/]*@#\1:***@#'; }

pg_find_bin_dir() {
    local d
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    if [ -n "$d" ] && [ -x "$d/initdb" ]; then echo "$d"; return 0; fi
    d=$(dirname "$(command -v initdb 2>/dev/null)" 2>/dev/null)
    if [ -n "$d" ] && [ -x "$d/initdb" ]; then echo "$d"; return 0; fi
    return 1
}

pg_install() {
    if [ "$(id -u)" -ne 0 ]; then
        pg_log "no PostgreSQL server binaries found; install them with:"
        pg_log "    sudo apt-get install -y postgresql postgresql-client"
        pg_log "or set DATABASE_URL to a reachable server."
        return 1
    fi
    pg_log "no PostgreSQL server binaries found; installing them with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 && apt-get install -y -qq postgresql postgresql-client >&2
}

# pg_answers URL: true when a server answers at URL.
pg_answers() {
    local url=$1 bin
    bin=$(pg_find_bin_dir 2>/dev/null || true)
    if command -v pg_isready >/dev/null 2>&1; then
        pg_isready -q -t 3 -d "$url"
    elif [ -n "$bin" ] && [ -x "$bin/pg_isready" ]; then
        "$bin/pg_isready" -q -t 3 -d "$url"
    else
        # No client tools: settle for a TCP connect to host:port.
        local hostport host port
        hostport=$(printf '%s' "$url" | sed -E 's#^[a-z]+://([^@/]*@)?([^/?]*).*#\2#')
        host=${hostport%%:*}; port=${hostport##*:}
        [ "$port" = "$hostport" ] && port=5432
        (exec 3<>"/dev/tcp/${host:-127.0.0.1}/$port") 2>/dev/null
    fi
}

# as_pg CMD...: runs a server binary as the postgres OS user when root.
as_pg() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

pg_free_port() {
    local p
    for p in $(seq 54330 54429); do
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return 0; fi
    done
    return 1
}

ensure_postgres() {
    local name=${1:?cluster name} mode=${2:-}
    if [ -n "${DATABASE_URL:-}" ]; then
        if pg_answers "$DATABASE_URL"; then
            pg_log "using DATABASE_URL (server answers)"
            PG_BIN_DIR=$(pg_find_bin_dir || true); export PG_BIN_DIR
            return 0
        fi
        pg_log "DATABASE_URL is set but no server answers there; starting a private cluster instead"
    fi
    local bin
    bin=$(pg_find_bin_dir) || { pg_install && bin=$(pg_find_bin_dir); } || return 1
    export PG_BIN_DIR=$bin

    local root dir
    root=$(git rev-parse --show-toplevel 2>/dev/null || pwd)
    dir="$root/.pg/$name"
    mkdir -p "$dir"
    if [ "$(id -u)" -eq 0 ]; then
        id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql postgres
        chown postgres "$dir"
        # The postgres user must reach the folder; a repo under a private
        # home folder falls back to /tmp.
        if ! runuser -u postgres -- test -w "$dir"; then
            dir="/tmp/ecommerce-pipeline-pg/$(printf '%s' "$root" | cksum | cut -d' ' -f1)-$name"
            mkdir -p "$dir" && chmod 755 /tmp/ecommerce-pipeline-pg && chown postgres "$dir"
        fi
    fi
    local data="$dir/data" port
    if [ -f "$data/postmaster.pid" ] && port=$(cat "$dir/port" 2>/dev/null) \
        && "$bin/pg_isready" -q -h 127.0.0.1 -p "$port"; then
        pg_log "reusing the private cluster in $dir (port $port)"
    else
        if [ ! -f "$data/PG_VERSION" ]; then
            pg_log "creating a private cluster in $dir"
            as_pg "$bin/initdb" -D "$data" -U postgres --auth=trust -E UTF8 --locale=C >"$dir/initdb.log" 2>&1 \
                || { cat "$dir/initdb.log" >&2; return 1; }
        fi
        port=$(pg_free_port) || { pg_log "no free port in 54330-54429"; return 1; }
        echo "$port" >"$dir/port"
        local opts="-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=200"
        [ "$mode" = fast ] && opts="$opts -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        # More server settings for this cluster (a profile's extensions).
        opts="$opts ${PG_EXTRA_OPTS:-}"
        rm -f "$data/postmaster.pid"
        as_pg "$bin/pg_ctl" -D "$data" -o "$opts" -l "$dir/server.log" -w -t 60 start >/dev/null \
            || { pg_log "the private cluster did not start; its log:"; tail -n 20 "$dir/server.log" >&2; return 1; }
        pg_log "started a private cluster in $dir on port $port"
        PG_STARTED_DATA=$data
    fi
    export DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
}

stop_postgres() {
    if [ -n "${PG_STARTED_DATA:-}" ]; then
        as_pg "$PG_BIN_DIR/pg_ctl" -D "$PG_STARTED_DATA" -m fast -w stop >/dev/null 2>&1 \
            && pg_log "stopped the private cluster in ${PG_STARTED_DATA%/data}"
        PG_STARTED_DATA=
    fi
}

# create_database URL NAME: prints a URL to database NAME on the same server,
# creating it when missing.
create_database() {
    local url=$1 name=$2 psql
    psql=$(command -v psql || echo "$PG_BIN_DIR/psql")
    if [ "$("$psql" "$url" -tAc "SELECT 1 FROM pg_database WHERE datname = '$name'")" != 1 ]; then
        "$psql" "$url" -qc "CREATE DATABASE \"$name\"" >&2
    fi
    printf '%s\n' "$url" | sed -E "s#/[^/?]*(\?|\$)#/$name\1#"
}
