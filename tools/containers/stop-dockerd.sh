#!/usr/bin/env bash
# Stop the dockerd that build-images.sh started (by its pid file); nothing else.
set -euo pipefail
pidfile="$(cd "$(dirname "$0")/../.." && pwd)/.sagaline/dockerd.pid"
[ -f "$pidfile" ] || exit 0
pid=$(cat "$pidfile")
if grep -q dockerd "/proc/$pid/cmdline" 2>/dev/null; then
  kill "$pid"
  for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
fi
rm -f "$pidfile"
