#!/usr/bin/env bash
# Stop the cluster started by up.sh: cancel its jobs, stop the daemons by their pid files, restore /etc/slurm.
set -uo pipefail

DIR="${OOFLINE_SLURM_DIR:-/tmp/oofline-slurm}"
[ -d "$DIR" ] || { echo "down.sh: nothing to stop ($DIR absent)"; exit 0; }

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

if alive "$DIR/slurmctld.pid"; then
  jobs="$(squeue -h -o %i 2>/dev/null || true)"
  if [ -n "$jobs" ]; then
    # shellcheck disable=SC2086
    scancel $jobs 2>/dev/null || true
    for _ in $(seq 1 30); do
      [ -z "$(squeue -h -t R,CG,PD -o %i 2>/dev/null)" ] && break
      sleep 1
    done
  fi
fi

stop() {  # stop one daemon by its pid file, waiting for it to exit
  local pidfile="$1"
  alive "$pidfile" || return 0
  local pid; pid="$(cat "$pidfile")"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
  kill -9 "$pid" 2>/dev/null || true
}

stop "$DIR/slurmd.pid"
stop "$DIR/slurmctld.pid"
if [ -e "$DIR/munged.started-by-us" ]; then
  stop "$DIR/munged.pid"
fi

for f in slurm.conf gres.conf; do
  if [ -e "$DIR/etc-$f.ours" ]; then
    if [ -e "$DIR/etc-$f.backup" ]; then cp "$DIR/etc-$f.backup" "/etc/slurm/$f"; else rm -f "/etc/slurm/$f"; fi
  fi
done
rm -rf "$DIR"
echo "down.sh: cluster stopped"
