#!/usr/bin/env bash
# compose.yaml brought up for real on locally built images: the platform starts, `sagaline
# demo` places 1,000 orders against it and checks the invariants, Prometheus scrapes every
# service, and the whole project comes down leaving no container, network or volume behind.
# Exit status: 0 when all of that held.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
secure=${SAGALINE_COMPOSE_SECURE:-0}  # 1: with deploy/compose.secure.yaml (least privilege)
if [ "$secure" = 1 ]; then
  project=${SAGALINE_COMPOSE_PROJECT:-sagaline-secure}
  compose=(docker-compose -p "$project" -f compose.yaml -f tools/containers/compose.local.yaml
    -f deploy/compose.secure.yaml)
else
  project=${SAGALINE_COMPOSE_PROJECT:-sagaline-local}
  compose=(docker-compose -p "$project" -f compose.yaml -f tools/containers/compose.local.yaml)
fi
orders=${SAGALINE_COMPOSE_ORDERS:-1000}
began=$(date +%s)
step() { echo "== $* (at $(( $(date +%s) - began ))s)"; }

for port in 19092 15432 9090; do  # compose.yaml publishes these on 127.0.0.1
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "port $port is in use on 127.0.0.1 (the local stack? \`make down\` stops it): compose needs it" >&2
    exit 2
  fi
done
tools/containers/build-images.sh
leftovers() {
  for kind in container volume network; do
    docker "$kind" ls ${kind/container/-a} -q --filter "label=com.docker.compose.project=$project" 2>/dev/null || true
  done
}
cleanup() { "${compose[@]}" --profile tools down -v --remove-orphans -t 30 >/dev/null 2>&1 || true; }
trap cleanup EXIT
if [ -n "$(leftovers)" ]; then echo "removing leftovers of an earlier run of $project"; cleanup; fi

step "building the application image (sagaline:dev on sagaline/python:3.11)"
"${compose[@]}" build -q topics
# the build that sagaline:dev no longer names is left untagged: on the vfs storage of our own
# dockerd it is a full copy of the image, and repeated runs filled this machine's disk
docker image prune -f --filter "label=io.sagaline.image=app" >/dev/null || true
step "up"
"${compose[@]}" up -d
step "demo: $orders orders"
"${compose[@]}" run --rm -T demo sagaline demo --orders "$orders" --platform attach --seed 8
if [ "$secure" = 1 ]; then
  step "least privilege: what each principal is refused"
  refused() {  # refused WHAT REASON COMMAND...: the command must fail, its output matching REASON
    local what=$1 reason=$2; shift 2
    if output=$("$@" 2>&1); then echo "  NOT refused: $what" >&2; exit 1; fi
    if ! grep -qE "$reason" <<<"$output"; then
      echo "  $what failed, but not with /$reason/:" >&2; tail -n 5 <<<"$output" >&2; exit 1
    fi
    echo "  refused: $what ($(grep -oE "$reason" <<<"$output" | head -n 1))"
  }
  # as the payment service (its uid, its settings), in one container
  "${compose[@]}" run --rm -T --no-deps payment python3 -c "$(cat tools/containers/secure-denials.py)"
  refused "a PLAINTEXT Kafka client on 127.0.0.1:19092" "Failed to acquire metadata" kcat -b 127.0.0.1:19092 -L -m 5
  refused "PostgreSQL over TCP without TLS" "rejects connection" \
    psql "host=127.0.0.1 port=15432 dbname=sagaline user=sagaline sslmode=disable connect_timeout=5" -c "SELECT 1"
fi
step "prometheus targets"
python3 - <<'PY'
import json, time, urllib.request
deadline = time.monotonic() + 60
health = {}
while True:
    try:
        with urllib.request.urlopen("http://127.0.0.1:9090/api/v1/targets", timeout=5) as reply:
            targets = json.load(reply)["data"]["activeTargets"]
        health = {t["labels"]["instance"]: t["health"] for t in targets}
    except OSError as exc:  # Prometheus still starting
        health = {"prometheus": repr(exc)}
    if len(health) == 5 and set(health.values()) == {"up"}:
        print("  all up:", ", ".join(sorted(health)))
        break
    if time.monotonic() > deadline:
        raise SystemExit(f"prometheus targets not all up: {health}")
    time.sleep(2)
PY
step "prometheus rules"
python3 - <<'PY'
import json, time, urllib.request
deadline = time.monotonic() + 30
while True:  # deploy/alerts.yml, mounted by compose.yaml, loaded and evaluated without error
    with urllib.request.urlopen("http://127.0.0.1:9090/api/v1/rules", timeout=5) as reply:
        rules = [r for g in json.load(reply)["data"]["groups"] for r in g["rules"]]
    health = {r["name"]: r["health"] for r in rules if r["type"] == "alerting"}
    if len(health) == 8 and set(health.values()) == {"ok"}:
        print("  loaded and evaluated:", ", ".join(sorted(health)))
        break
    if time.monotonic() > deadline:
        raise SystemExit(f"the alert rules are not all loaded and healthy: {health}")
    time.sleep(2)
PY
step "down"
start=$(date +%s)
"${compose[@]}" stop -t 30
echo "  stopped in $(( $(date +%s) - start ))s; exit codes:"
unclean=0
for id in $("${compose[@]}" ps -q); do
  read -r name code <<<"$(docker inspect -f '{{.Name}} {{.State.ExitCode}}' "$id")"
  echo "    ${name#/} $code"
  # 0, or 143 (128 + SIGTERM) from the JVM's orderly shutdown hook; 137 is a kill after -t
  case "$code" in
    0|143) ;;
    *) unclean=1; echo "    -- last lines of ${name#/}:"; docker logs --tail 30 "$id" 2>&1 | sed 's/^/       /' ;;
  esac
done
"${compose[@]}" --profile tools down -v --remove-orphans -t 30
left=$(leftovers)
if [ -n "$left" ]; then echo "left behind after down: $left" >&2; exit 1; fi
trap - EXIT
if [ "$unclean" != 0 ]; then echo "a service did not stop cleanly" >&2; exit 1; fi
echo "compose platform: up, demo passed, down clean, in $(( $(date +%s) - began ))s"
