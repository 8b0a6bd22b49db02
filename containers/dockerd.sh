#!/usr/bin/env bash
# Start or stop a private Docker daemon that works in unprivileged sandboxes (root needed):
# no iptables, no bridge network (build and run with --network host / none), default ulimits
# nofile 1024 / nproc 4096 (raising limits is not permitted there), data in $OOFLINE_DOCKER_ROOT.
#
#   bash containers/dockerd.sh start   # prints: export DOCKER_HOST=unix://$OOFLINE_DOCKER_ROOT/docker.sock
#   bash containers/dockerd.sh stop    # stops it by its pid file; images stay in the data root
set -euo pipefail

DOCKER_ROOT="${OOFLINE_DOCKER_ROOT:-/tmp/oofline-docker}"
SOCKET="unix://$DOCKER_ROOT/docker.sock"
PIDFILE="$DOCKER_ROOT/dockerd.pid"

case "${1:-}" in
  start)
    if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
      echo "export DOCKER_HOST=$SOCKET"; exit 0
    fi
    command -v dockerd >/dev/null || {
      DEBIAN_FRONTEND=noninteractive apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io >/dev/null
    }
    mkdir -p "$DOCKER_ROOT/data" "$DOCKER_ROOT/exec"
    cat > "$DOCKER_ROOT/daemon.json" <<JSON
{
  "data-root": "$DOCKER_ROOT/data",
  "exec-root": "$DOCKER_ROOT/exec",
  "pidfile": "$PIDFILE",
  "hosts": ["$SOCKET"],
  "iptables": false,
  "ip6tables": false,
  "bridge": "none",
  "default-ulimits": {
    "nofile": {"Name": "nofile", "Soft": 1024, "Hard": 1024},
    "nproc": {"Name": "nproc", "Soft": 4096, "Hard": 4096}
  }
}
JSON
    nohup dockerd --config-file "$DOCKER_ROOT/daemon.json" >"$DOCKER_ROOT/dockerd.log" 2>&1 &
    for _ in $(seq 1 60); do
      DOCKER_HOST="$SOCKET" docker info >/dev/null 2>&1 && { echo "export DOCKER_HOST=$SOCKET"; exit 0; }
      sleep 1
    done
    echo "dockerd.sh: dockerd did not start; see $DOCKER_ROOT/dockerd.log" >&2
    exit 1 ;;
  stop)
    [ -f "$PIDFILE" ] || exit 0
    pid="$(cat "$PIDFILE")"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || exit 0; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true ;;
  *) echo "usage: bash containers/dockerd.sh start|stop" >&2; exit 1 ;;
esac
