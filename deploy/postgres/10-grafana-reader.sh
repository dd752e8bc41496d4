#!/bin/sh
# Run once by the postgres image when it creates the database
# (/docker-entrypoint-initdb.d): the read-only role Grafana connects as. It
# may read every table the pipeline's role creates later, and write none.
set -eu
psql -v ON_ERROR_STOP=1 -v pw="${GRAFANA_DB_PASSWORD:-grafana}" --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<'SQL'
CREATE ROLE grafana LOGIN PASSWORD :'pw';
GRANT CONNECT ON DATABASE :"DBNAME" TO grafana;
GRANT USAGE ON SCHEMA public TO grafana;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO grafana;
ALTER ROLE grafana SET default_transaction_read_only = on;
SQL
