#!/usr/bin/env bash
# The compose stack, for real, with podman: build the API and CPU worker images
# (deploy/build-images.sh), start deploy/compose.yaml with podman-compose (profile cpu), fetch
# a model into its volume with the `models` service, score a job through the API, stop the
# stack and start it again on its volumes (the job and its results still there, a second job
# scored), then tear it all down, volumes included. Prints the images' build times and sizes and
# the time from `up` to the first scored item. CI runs it (tests/test_smoke.py).
#
# The model is the tiny random Llama the tests build (nothing is downloaded), put into a folder
# the `models` service fetches from. PostgreSQL and Redis: the official images where a registry
# answers, else stand-ins built here from Debian's packages (deploy/podman/). podman's settings
# for these machines (runc, ulimits) are in deploy/podman/containers.conf.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
export CONTAINERS_CONF=${CONTAINERS_CONF:-$repo/deploy/podman/containers.conf}
python=$repo/.venv/bin/python
compose_bin=$repo/.venv/bin/podman-compose
command -v podman >/dev/null || apt-get install -y -q podman runc >/dev/null
[ -x "$compose_bin" ] || "$repo/.venv/bin/pip" install -q podman-compose
project=labelq-smoke-$$
work=$(mktemp -d /tmp/labelq-smoke.XXXXXX)
compose=("$compose_bin" --project-name "$project" -f "$work/compose.yaml" -f "$work/smoke.yaml"
  --profile cpu)

say() { echo "smoke: $*"; }
container() { echo "${project}_$1_1"; }

cleanup() {
  local rc=$?
  if [ $rc -ne 0 ]; then
    say "failed (exit $rc); the last lines of each container's log:"
    for c in $(podman ps -a --filter "label=io.podman.compose.project=$project" --format '{{.Names}}'); do
      echo "--- $c"
      podman logs --tail 25 "$c" 2>&1 || true
    done
  fi
  "${compose[@]}" down -v >/dev/null 2>&1 || true
  podman volume ls -q --filter "label=io.podman.compose.project=$project" | xargs -r podman volume rm -f >/dev/null 2>&1 || true
  rm -rf "$work"
  exit $rc
}
trap cleanup EXIT

# 0. What an earlier run killed outright (no trap ran) left behind: its containers, network
#    and volumes, named after its process, which is gone.
orphans() {  # KIND, then its `ls` arguments
  local kind=$1 name pid
  shift
  for name in $(podman "$kind" ls "$@" | grep -E '^labelq-smoke-[0-9]+_' || true); do
    pid=${name#labelq-smoke-}; pid=${pid%%_*}
    kill -0 "$pid" 2>/dev/null || podman "$kind" rm -f "$name" >/dev/null
  done
}
orphans container -a --format '{{.Names}}'
orphans volume --format '{{.Name}}'
orphans network --format '{{.Name}}'

# 1. Images. The base and the dependency layers are cached by podman between runs.
bash deploy/build-images.sh smoke
base=${LABELQ_IMAGE_BASE:-localhost/labelq-base:bookworm}
images() {  # postgres and redis: official where they can be pulled, else built here
  local name=$1 official=$2
  if podman image exists "$official" || timeout 60 podman pull -q "$official" >/dev/null 2>&1; then
    echo "$official"
  else
    podman build -q --network host --build-arg "BASE=$base" -f "deploy/podman/Dockerfile.$name" \
      -t "localhost/labelq-$name:smoke" . >/dev/null
    echo "localhost/labelq-$name:smoke"
  fi
}
postgres_image=$(images postgres docker.io/library/postgres:16.6-bookworm)
redis_image=$(images redis docker.io/library/redis:7.4.1-bookworm)

# 2. The stack's files, the model to fetch, and passwords of this run's own.
cp deploy/compose.yaml "$work/compose.yaml"
cp -r deploy/postgres "$work/postgres"
"$python" -c "from labelq.demo_model import build_demo_model as b; b('$work/source')" >/dev/null 2>&1
chmod -R a+rX "$work/source"  # the containers' user (10001) reads it
port=$("$python" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
secret() { "$python" -c "import secrets; print(secrets.token_hex(16))"; }
{
  "$python" -c "from labelq import settings_doc; print(settings_doc.env_example())" \
    | grep -v -E '^(# )?(POSTGRES_PASSWORD|LABELQ_DB_PASSWORD|REDIS_PASSWORD|LABELQ_MODEL_(SOURCE|NAME|REVISION)|LABELQ_API_PORT|LABELQ_MAX_MODEL_LEN)='
  echo "POSTGRES_PASSWORD=$(secret)"
  echo "LABELQ_DB_PASSWORD=$(secret)"
  echo "REDIS_PASSWORD=$(secret)"
  echo "LABELQ_MODEL_SOURCE=/source"
  echo "LABELQ_MODEL_REVISION="
  echo "LABELQ_MODEL_NAME=tiny"
  echo "LABELQ_API_PORT=$port"
  echo "LABELQ_MAX_MODEL_LEN=512"
} > "$work/.env"
cat > "$work/smoke.yaml" <<EOF
services:
  postgres: {image: $postgres_image}
  redis: {image: $redis_image}
  migrate: {image: localhost/labelq-api:smoke}
  models:
    image: localhost/labelq-api:smoke
    volumes: ["$work/source:/source:ro"]
  api: {image: localhost/labelq-api:smoke}
  beat: {image: localhost/labelq-api:smoke}
  worker-cpu:
    image: localhost/labelq-worker-cpu:smoke
    environment: {LABELQ_KV_CACHE_GIB: "1"}
EOF

# podman runs healthchecks from systemd timers, which these machines do not have, and
# podman-compose before podman 4.6 does not wait on them (its services then start as soon as
# their dependencies run; labelq's retry until PostgreSQL and Redis answer): run a check until
# it passes.
healthy() {  # CONTAINER SECONDS
  local deadline=$((SECONDS + $2)) said=""
  until out=$(podman healthcheck run "$1" 2>&1); do
    if why=$(podman exec "$1" cat /tmp/labelq-ready.why 2>/dev/null); then out="$out: $why"; fi
    [ "$out" != "$said" ] && [ -n "$out" ] && say "$1 not yet healthy: $out" && said=$out
    [ $SECONDS -lt $deadline ] || { say "$1 not healthy after $2 s"; return 1; }
    sleep 2
  done
}
exited_ok() {  # CONTAINER: waits for it to end, fails unless it exited 0
  local rc
  rc=$(podman wait "$1")
  [ "$rc" = 0 ] || { say "$1 exited $rc"; podman logs --tail 20 "$1"; return 1; }
}
up() {
  # The compose file's order, step by step: podman 4.3 cannot start a container whose
  # dependency has exited (`--requires` on the finished migrate or models service: "not found
  # in input list"), so each step is started without its links, once the previous one is done.
  local step
  for step in "postgres redis models" "migrate" "api beat worker-cpu"; do
    # shellcheck disable=SC2086
    "${compose[@]}" up -d --no-deps $step >>"$work/compose.log" 2>&1 \
      || { tail -20 "$work/compose.log"; return 1; }
    case $step in
      postgres*) healthy "$(container postgres)" 120; healthy "$(container redis)" 60
                 exited_ok "$(container models)"; podman logs "$(container models)" | tail -1 ;;
      migrate) exited_ok "$(container migrate)" ;;
    esac
  done
  healthy "$(container api)" 120
  healthy "$(container worker-cpu)" 600
}

cat > "$work/drive.py" <<'EOF'
"""The smoke test's client: `first` scores a job and records its id; `again` (after a restart)
finds that job and its results whole, and scores a second one."""
import os
import sys
import time
from pathlib import Path

from labelq.client import LabelqClient

SPEC = (
    '{"name": "sentiment", "model": "/models/tiny", "template": "Review: {{ text }} Sentiment:",'
    ' "labels": {"positive": " positive", "negative": " negative"}}'
)
lines = Path("../shared/data/sst2/stsa.binary.dev").read_text().splitlines()
texts = [line.split(" ", 1)[1].strip() for line in lines[:200]]
items = [{"custom_id": str(i), "text": t} for i, t in enumerate(texts)]
saved = Path(os.environ["SMOKE_WORK"]) / "job"


def scored(client: LabelqClient, job_id: str) -> None:
    final = client.wait(job_id, timeout=900)
    assert (final["state"], final["succeeded"]) == ("succeeded", len(items)), final
    rows = list(client.results(job_id, limit=1000))
    assert len(rows) == len(items), len(rows)
    assert all(r["label"] in ("positive", "negative") for r in rows), rows[0]
    assert sorted(int(r["custom_id"]) for r in rows) == list(range(len(items)))


with LabelqClient(os.environ["SMOKE_URL"], os.environ["SMOKE_KEY"]) as client:
    if sys.argv[1] == "first":
        client.create_classifier(SPEC, yaml=False)
        job = client.submit("sentiment", items)
        while client.job(job["id"])["succeeded"] == 0:
            time.sleep(0.25)
        up = time.time() - float(os.environ["SMOKE_UP_AT"])
        print(f"smoke: first item scored {up:.0f} s after `up`")
        scored(client, job["id"])
        saved.write_text(job["id"])
        print(f"smoke: job {job['id']}: {len(items)} items scored and served")
    else:
        first = saved.read_text()
        assert client.job(first)["succeeded"] == len(items)
        assert len(list(client.results(first, limit=1000))) == len(items)
        job = client.submit("sentiment", items)
        scored(client, job["id"])
        print(f"smoke: after the restart: job {first} whole, job {job['id']} scored")
EOF

# 3. Up, a key, a job.
up_at=$(date +%s.%N)
started=$SECONDS
up
say "stack up in $((SECONDS - started)) s (its worker ready: model fetched and loaded)"
key=$(podman exec "$(container api)" labelq keys create --name smoke --tenant default --scopes admin 2>/dev/null)
export SMOKE_URL=http://127.0.0.1:$port SMOKE_KEY=$key SMOKE_UP_AT=$up_at SMOKE_WORK=$work
"$python" "$work/drive.py" first

# 4. Stop (containers gone, volumes kept) and start again: same data, the model not fetched
#    again, a new job scored.
"${compose[@]}" down >>"$work/compose.log" 2>&1
started=$SECONDS
up
say "restarted on its volumes in $((SECONDS - started)) s"
"$python" "$work/drive.py" again

# 5. Torn down by the trap: containers, network and volumes.
say "passed"
