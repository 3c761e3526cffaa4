#!/usr/bin/env bash
# The whole test suite: lint, types, then every test (slow ones included) against real Redis,
# PostgreSQL and vLLM. Starts the local Redis and PostgreSQL if they are down.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; then
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
fi
if ! (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; then
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
fi
# The dashboard's browser test drives Debian's headless Chromium.
if ! command -v chromium >/dev/null 2>&1; then
  (apt-get install -y -q chromium >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null)) \
    || echo "could not install chromium: the dashboard page test will fail" >&2
fi
# promtool checks the alert rules and a live /metrics (Debian's prometheus package brings it;
# its server is not started).
if ! command -v promtool >/dev/null 2>&1; then
  (apt-get install -y -q --no-install-recommends prometheus >/dev/null 2>&1 \
    || (apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends prometheus >/dev/null)) \
    || echo "could not install prometheus: the promtool tests will fail" >&2
fi
# deploy/smoke.sh builds and runs the images with podman (runc: these machines' cgroups) and
# makes their Debian base with debootstrap when no registry answers.
if ! command -v podman >/dev/null 2>&1 || ! command -v runc >/dev/null 2>&1 \
  || ! command -v debootstrap >/dev/null 2>&1; then
  (apt-get install -y -q podman runc debootstrap >/dev/null 2>&1 \
    || (apt-get update -q >/dev/null && apt-get install -y -q podman runc debootstrap >/dev/null)) \
    || echo "could not install podman: the smoke test will fail" >&2
fi
for _ in $(seq 1 30); do
  (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null && (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null && break
  sleep 1
done
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
