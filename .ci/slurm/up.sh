#!/usr/bin/env bash
# Start a one-node Slurm cluster on localhost with one fake GPU, for tests/test_slurm.py.
# Root only (writes /etc/slurm, starts munged/slurmctld/slurmd directly: no systemd here).
# Stop it with .ci/slurm/down.sh; state, logs and pid files live in $OOFLINE_SLURM_DIR.
set -euo pipefail

DIR="${OOFLINE_SLURM_DIR:-/tmp/oofline-slurm}"
CPUS="${OOFLINE_SLURM_CPUS:-$(nproc)}"
MEM_MB="${OOFLINE_SLURM_MEM_MB:-8000}"

if [ "$(id -u)" != 0 ]; then
  echo "up.sh: needs root (writes /etc/slurm and starts the Slurm daemons)" >&2
  exit 1
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sinfo >/dev/null \
   || ! command -v munged >/dev/null; then
  echo "up.sh: installing slurm-wlm slurmctld slurmd slurm-client munge" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurm-wlm slurmctld slurmd slurm-client munge >/dev/null
fi

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

if alive "$DIR/slurmctld.pid" && alive "$DIR/slurmd.pid"; then
  echo "up.sh: cluster already running (state in $DIR)"
  exit 0
fi

mkdir -p "$DIR/state" "$DIR/spool" /etc/slurm

# munge: a key, a socket dir owned by munge, the daemon running as munge
mkdir -p /run/munge /var/log/munge /var/lib/munge /etc/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
chmod 0755 /run/munge
if [ ! -s /etc/munge/munge.key ]; then
  mungekey --create --keyfile /etc/munge/munge.key
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
if ! alive /run/munge/munged.pid; then
  runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid
  cp /run/munge/munged.pid "$DIR/munged.pid"
  touch "$DIR/munged.started-by-us"
fi

# Facts from issue 6: no cgroup.conf (22.05 fails with CgroupPlugin=disabled); linuxproc/none plugins;
# DefMemPerCPU so one job does not take the whole node; a fake GPU needs a File=, here /dev/null;
# MinJobAge=600 keeps finished jobs visible to `squeue` (the status command used without accounting).
cat > "$DIR/slurm.conf" <<CONF
ClusterName=oofline
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
GresTypes=gpu
MinJobAge=600
ReturnToService=2
MpiDefault=none
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB Gres=gpu:1 State=UNKNOWN
PartitionName=cpu Nodes=localhost Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=localhost MaxTime=INFINITE State=UP
CONF
cat > "$DIR/gres.conf" <<CONF
AutoDetect=off
NodeName=localhost Name=gpu File=/dev/null
CONF
# The plugin's job step unsets SLURM_CONF, so the default location must hold the config too.
for f in slurm.conf gres.conf; do
  if [ -e "/etc/slurm/$f" ] && [ ! -e "$DIR/etc-$f.ours" ]; then
    cp "/etc/slurm/$f" "$DIR/etc-$f.backup"
  fi
  cp "$DIR/$f" "/etc/slurm/$f"
  touch "$DIR/etc-$f.ours"
done

/usr/sbin/slurmctld -c -f /etc/slurm/slurm.conf
/usr/sbin/slurmd -N localhost -f /etc/slurm/slurm.conf

for _ in $(seq 1 60); do
  state="$(sinfo -h -N -n localhost -o %t 2>/dev/null | head -1 || true)"
  case "$state" in
    idle|mix|alloc) echo "up.sh: one-node cluster ready (node localhost $state, state in $DIR)"; exit 0 ;;
    drain*|down*|inval*) scontrol update NodeName=localhost State=RESUME >/dev/null 2>&1 || true ;;
  esac
  sleep 1
done
echo "up.sh: node did not become idle; see $DIR/slurmctld.log and $DIR/slurmd.log" >&2
sinfo -N -l >&2 || true
exit 1
