#!/usr/bin/env bash
# Install the system packages sagaline needs when they are missing (Debian, as root):
#   (default)     Java 17, Maven, PostgreSQL, Python venv, Node.js/npm, kcat (tests produce
#                 hostile records with a client that is not ours), docker-compose (the unit
#                 tier validates compose.yaml with it; no engine needed), prometheus
#                 (promtool tests the alert rules; the observability test runs the server)
#   --containers  also docker.io, debootstrap (the testcontainers and compose paths)
# Installs nothing when everything is there; without root it names what is missing.
set -euo pipefail
need=()
command -v java >/dev/null 2>&1 || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || need+=(maven)
if ! command -v pg_ctl >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
  need+=(postgresql)
fi
python3 -c "import venv, ensurepip" >/dev/null 2>&1 || need+=(python3-venv)
command -v npm >/dev/null 2>&1 || need+=(nodejs npm)
command -v kcat >/dev/null 2>&1 || need+=(kcat)
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v openssl >/dev/null 2>&1 || need+=(openssl)  # the secure local stack's CA and certificates
if [ "${1:-}" = "--containers" ]; then
  command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
  command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
fi
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "missing system packages: ${need[*]} (sudo apt-get install ${need[*]})" >&2
  exit 3
fi
echo "installing ${need[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
