#!/usr/bin/env bash
# Build sagaline's test images locally, with no container registry:
#   sagaline/base:<inputs>  Debian bookworm (debootstrap) with OpenJDK 17 JRE and PostgreSQL 15
#   sagaline/kafka:3.9.2    base + Kafka's jars (the local stack's Maven cache) + KAFKA_* env config
#   sagaline/postgres:15    base + POSTGRES_* env config
#   sagaline/python:3.11    base + Debian's python3/venv (the app image's base, compose.local.yaml)
#   sagaline/prometheus:2   base + Debian's prometheus, laid out like prom/prometheus
# When no Docker engine answers and we are root, starts Debian's dockerd (vfs storage) and
# records its pid in .sagaline/dockerd.pid; `tools/containers/stop-dockerd.sh` stops only that.
# Images are rebuilt only when their inputs (these files, the Kafka version) change.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
state="$root/.sagaline"
cache="${SAGALINE_CACHE_DIR:-$HOME/.cache/sagaline}"
mkdir -p "$state"

if ! docker info >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ]; then echo "no Docker engine answers and we are not root: start one" >&2; exit 3; fi
  command -v dockerd >/dev/null || { echo "dockerd not found: apt-get install docker.io" >&2; exit 3; }
  nohup dockerd --storage-driver=vfs --data-root /var/lib/docker-sagaline --pidfile "$state/dockerd.pid" \
    > "$state/dockerd.log" 2>&1 &
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { echo "dockerd did not start: see $state/dockerd.log" >&2; exit 1; }
fi

packages="openjdk-17-jre-headless,postgresql-15"
base="sagaline/base:$(printf 'bookworm %s' "$packages" | sha256sum | cut -c1-12)"
tag=$(cat "$here"/Dockerfile.* "$here"/*-entrypoint.sh "$here"/kafka-broker-api-versions.sh "$here"/log4j.properties | sha256sum | cut -c1-12)
if ! docker image inspect "$base" >/dev/null 2>&1; then
  command -v debootstrap >/dev/null || { echo "debootstrap not found: apt-get install debootstrap" >&2; exit 3; }
  rootfs="$state/images/rootfs"
  rm -rf "$rootfs" && mkdir -p "$state/images"
  echo "building $base from a debootstrap root filesystem (a few minutes, once)"
  debootstrap --variant=minbase --include="$packages" \
    bookworm "$rootfs" http://deb.debian.org/debian > "$state/images/debootstrap.log"
  tar -C "$rootfs" -c . | docker import - "$base" >/dev/null
  rm -rf "$rootfs"
fi

"$root/.venv/bin/python" - <<PY
from pathlib import Path
from sagaline.localstack.kafka import ensure_jars
ensure_jars(Path("$cache"))
PY
ctx="$state/images/kafka-context"
rm -rf "$ctx" && mkdir -p "$ctx"
cp -r "$cache/kafka-3.9.2/libs" "$ctx/libs" && rm -f "$ctx/libs/.complete"
cp "$here/kafka-entrypoint.sh" "$here/kafka-broker-api-versions.sh" "$here/log4j.properties" "$ctx/"
if ! docker image inspect "sagaline/kafka:3.9.2-$tag" >/dev/null 2>&1; then
  docker build -q --build-arg "BASE=$base" -f "$here/Dockerfile.kafka" -t "sagaline/kafka:3.9.2-$tag" "$ctx" >/dev/null
fi
if ! docker image inspect "sagaline/postgres:15-$tag" >/dev/null 2>&1; then
  docker build -q --build-arg "BASE=$base" -f "$here/Dockerfile.postgres" -t "sagaline/postgres:15-$tag" "$here" >/dev/null
fi
# compose.local.yaml's stand-ins for python:3.11-slim and prom/prometheus (apt inside the build)
if ! docker image inspect "sagaline/prometheus:2-$tag" >/dev/null 2>&1; then
  docker build -q --build-arg "BASE=$base" -f "$here/Dockerfile.prometheus" -t "sagaline/prometheus:2-$tag" "$here" >/dev/null
fi
ctx="$state/images/python-context"
rm -rf "$ctx" && mkdir -p "$ctx"
cp "${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}" "$ctx/host-ca-certificates.crt"
python_tag="$tag-$(sha256sum < "$ctx/host-ca-certificates.crt" | cut -c1-8)"
if ! docker image inspect "sagaline/python:3.11-$python_tag" >/dev/null 2>&1; then
  docker build -q --build-arg "BASE=$base" -f "$here/Dockerfile.python" -t "sagaline/python:3.11-$python_tag" "$ctx" >/dev/null
fi
docker tag "sagaline/python:3.11-$python_tag" sagaline/python:3.11
for image in kafka:3.9.2 postgres:15 prometheus:2; do
  docker tag "sagaline/$image-$tag" "sagaline/$image"
done
# Earlier builds of these images (other inputs) only take disk space: vfs stores each in full.
keep=" $base sagaline/kafka:3.9.2-$tag sagaline/postgres:15-$tag sagaline/prometheus:2-$tag sagaline/python:3.11-$python_tag "
for image in $(docker images --format '{{.Repository}}:{{.Tag}}' | grep -E '^sagaline/(base|kafka|postgres|prometheus|python):(.*-)?[0-9a-f]{12}'); do
  case "$keep" in *" $image "*) ;; *) docker rmi "$image" >/dev/null 2>&1 || true ;; esac
done
echo "images ready: sagaline/kafka:3.9.2 sagaline/postgres:15 sagaline/python:3.11 sagaline/prometheus:2 (inputs $tag)"
