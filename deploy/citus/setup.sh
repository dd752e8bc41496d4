#!/usr/bin/env bash
# Joins a Citus cluster for the compose profile `citus`, once its nodes
# answer: the extension in database ecommerce on every node, the password
# the coordinator uses for its connections to the nodes (pg_dist_authinfo,
# synced to the workers), the coordinator's own address, then the workers.
# Every step may run again (the service restarts on failure).
#
#   setup.sh COORDINATOR WORKER...      (PGPASSWORD: the nodes' password)
set -euo pipefail
coordinator=$1; shift
run() { psql -v ON_ERROR_STOP=1 -qtAX -h "$1" -U pipeline -d ecommerce "${@:2}"; }
for node in "$coordinator" "$@"; do
    until pg_isready -q -h "$node" -U pipeline -d ecommerce; do sleep 1; done
    run "$node" -c "CREATE EXTENSION IF NOT EXISTS citus"
done
run "$coordinator" -v pw="password=$PGPASSWORD" <<'SQL'
INSERT INTO pg_dist_authinfo (nodeid, rolename, authinfo)
SELECT 0, current_user, :'pw'
WHERE NOT EXISTS (SELECT 1 FROM pg_dist_authinfo WHERE nodeid = 0 AND rolename = current_user);
SQL
run "$coordinator" -c "SELECT citus_set_coordinator_host('$coordinator', 5432)" >/dev/null
for worker in "$@"; do
    run "$coordinator" -c "SELECT citus_add_node('$worker', 5432)" >/dev/null
done
echo "citus-setup: $(run "$coordinator" -c "SELECT count(*) FROM citus_get_active_worker_nodes()") workers active"
