#!/bin/sh
# The image's entrypoint (under tini): runs the command as the owner of the
# data folder, so that files the pipeline writes into bind-mounted ./data and
# ./checkpoints belong to whoever owns those folders on the host, and the
# folders are writable, whatever that user's id:
# - a Linux user with any uid: the program runs as that uid and gid;
# - root on the host, or rootless Docker / Podman (where the host user is
#   the container's root): the folder is root's, the program runs as root;
# - Docker Desktop: the folder shows the ids its file sharing maps to.
# Started as another user (`user:` in compose, `docker run --user`), it runs
# the command as that user and changes nothing.
set -eu

if [ "$(id -u)" != 0 ]; then
    exec "$@"
fi

data=${DATA_DIR:-/data}
checkpoints=${CHECKPOINT_DIR:-/checkpoints}
mkdir -p "$data"
owner=$(stat -c '%u:%g' "$data")
uid=${owner%:*}
gid=${owner#*:}

if [ "$uid" = 0 ]; then
    exec "$@"
fi

# The checkpoint folder is the pipeline's own state: one Docker created
# (owned by root because ./checkpoints was missing) is handed to the data
# folder's owner.
if [ -d "$checkpoints" ] && [ "$(stat -c '%u' "$checkpoints")" = 0 ]; then
    chown -R "$uid:$gid" "$checkpoints"
fi
exec setpriv --reuid="$uid" --regid="$gid" --clear-groups -- "$@"
