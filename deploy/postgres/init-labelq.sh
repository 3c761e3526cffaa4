#!/bin/sh
# First start of the compose file's PostgreSQL: labelq's own role owns its database and is
# nothing more (no superuser, no CREATEROLE, no CREATEDB): a pipeline's source never runs as
# a role that can read the server's files or end other sessions.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres <<SQL
CREATE ROLE labelq LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD '${LABELQ_DB_PASSWORD}';
CREATE DATABASE labelq OWNER labelq;
REVOKE ALL ON DATABASE labelq FROM PUBLIC;
SQL
