#!/usr/bin/env bash
# A one-host Slurm on this machine, to try scripts/slurm/greenkd.sbatch before a real cluster.
#
#   scripts/slurm/local_cluster.sh start   # install slurm-wlm and munge if missing, start munged, slurmctld, slurmd
#   eval "$(scripts/slurm/local_cluster.sh env)"   # SLURM_CONF for sbatch, squeue, sinfo, scontrol
#   scripts/slurm/local_cluster.sh stop    # stop the three daemons (by the process ids they wrote)
#
# Runs as root (Debian's packages, daemons that switch to no other user). Everything it writes lives in one
# folder, $GREENKD_SLURM_DIR (default: $TMPDIR/greenkd-slurm): slurm.conf, a munge key and socket, state,
# logs and pid files; nothing in /etc is changed, so it never touches a Slurm or munge the machine already
# runs. The ports default to 6817/6818; GREENKD_SLURMCTLD_PORT and GREENKD_SLURMD_PORT move them.
#
# Exit status: 0 done; 2 bad usage; 3 the packages could not be installed (the reason is printed);
# 1 a daemon did not start (its log is printed).
set -euo pipefail

dir="${GREENKD_SLURM_DIR:-${TMPDIR:-/tmp}/greenkd-slurm}"
ctld_port="${GREENKD_SLURMCTLD_PORT:-6817}"
slurmd_port="${GREENKD_SLURMD_PORT:-6818}"
wait_s="${GREENKD_SLURM_WAIT_S:-60}"
conf="$dir/slurm.conf"
PACKAGES=(slurm-wlm munge)
DAEMONS=(slurmd slurmctld munged)  # stop order: the reverse of the start order

say() { echo "local_cluster.sh: $*" >&2; }

installed() { command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
  && command -v munged >/dev/null; }

install_packages() {
  installed && return 0
  if [ "$(id -u)" != 0 ]; then
    say "cannot install ${PACKAGES[*]}: apt-get needs root (run as root, or install them first)"; return 3
  fi
  if ! command -v apt-get >/dev/null; then
    say "cannot install ${PACKAGES[*]}: no apt-get on this machine (a Debian or Ubuntu package is expected)"; return 3
  fi
  say "installing ${PACKAGES[*]} with apt-get"
  local log="$dir/apt.log"
  local apt=(env DEBIAN_FRONTEND=noninteractive apt-get -y -q)
  # The package lists may be stale or missing: refresh them once if the first try fails.
  if ! "${apt[@]}" install --no-install-recommends "${PACKAGES[@]}" >"$log" 2>&1; then
    if ! { "${apt[@]}" update && "${apt[@]}" install --no-install-recommends "${PACKAGES[@]}"; } >>"$log" 2>&1; then
      say "cannot install ${PACKAGES[*]} with apt-get: $(grep -E '^(E|W):' "$log" | tail -3 | tr '\n' ' ')"
      tail -20 "$log" >&2
      return 3
    fi
  fi
  installed || { say "cannot install ${PACKAGES[*]}: apt-get ran, but slurmctld, slurmd, sbatch or munged is missing"
                 return 3; }
}

pid_of() { [ -s "$dir/$1.pid" ] && cat "$dir/$1.pid" 2>/dev/null || true; }
alive() { local pid; pid="$(pid_of "$1")"; [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; }

write_config() {
  mkdir -p "$dir/state" "$dir/spool" "$dir/munge"
  chmod 700 "$dir/munge"
  # munged refuses a key that others can read: one of our own, never /etc/munge's.
  if [ ! -s "$dir/munge/munge.key" ]; then
    head -c 1024 /dev/urandom > "$dir/munge/munge.key"
    chmod 600 "$dir/munge/munge.key"
  fi
  local node
  node="$(hostname -s)"
  # slurmd's own view of the hardware (CPUs, sockets, cores, memory), so the node never drains for a mismatch.
  local hardware
  hardware="$(slurmd -C | head -1 | sed -E 's/^NodeName=[^ ]+ //; s/ UpTime=.*//')"
  cat > "$conf" <<EOF
# One host, written by scripts/slurm/local_cluster.sh: controller and compute node on $node.
ClusterName=greenkd-local
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
AuthInfo=socket=$dir/munge/munge.socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
# No cgroups here: processes tracked by their parent, tasks not bound to cores.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
ReturnToService=2
# A finished job stays visible to scontrol for an hour: there is no accounting database to ask.
MinJobAge=3600
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$node NodeAddr=127.0.0.1 $hardware State=UNKNOWN
PartitionName=local Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
}

node_state() { SLURM_CONF="$conf" sinfo --noheader --format=%T 2>/dev/null | head -1; }

start() {
  mkdir -p "$dir"
  install_packages || exit $?
  if alive slurmctld && alive slurmd && alive munged; then
    say "already running (SLURM_CONF=$conf)"; exit 0
  fi
  stop_daemons
  write_config
  munged --force --socket="$dir/munge/munge.socket" --key-file="$dir/munge/munge.key" \
    --pid-file="$dir/munged.pid" --log-file="$dir/munged.log" --seed-file="$dir/munge/munge.seed" \
    || { say "munged did not start:"; tail -20 "$dir/munged.log" >&2; exit 1; }
  slurmctld -f "$conf" || { say "slurmctld did not start:"; tail -20 "$dir/slurmctld.log" >&2; exit 1; }
  slurmd -f "$conf" || { say "slurmd did not start:"; tail -20 "$dir/slurmd.log" >&2; exit 1; }
  local state="" deadline=$((SECONDS + wait_s))
  while [ $SECONDS -lt $deadline ]; do
    state="$(node_state)"
    [ "$state" = idle ] && { say "node $(hostname -s) idle (SLURM_CONF=$conf)"; return 0; }
    sleep 1
  done
  say "the node was not idle within ${wait_s}s (sinfo says '${state:-nothing}'); the daemons' logs:"
  for log in slurmctld slurmd munged; do echo "--- $log.log" >&2; tail -15 "$dir/$log.log" >&2 || true; done
  exit 1
}

stop_daemons() {
  local daemon pid
  for daemon in "${DAEMONS[@]}"; do
    pid="$(pid_of "$daemon")"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || continue
    kill -TERM "$pid" 2>/dev/null || true
    # A daemon flushes its state on SIGTERM; give it ten seconds before SIGKILL.
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      say "$daemon (pid $pid) ignored SIGTERM; killing it"; kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$dir/$daemon.pid"
  done
}

case "${1:-}" in
  start) start ;;
  stop) stop_daemons; say "stopped (${dir})" ;;
  env) echo "export SLURM_CONF=$conf" ;;
  status) for d in "${DAEMONS[@]}"; do alive "$d" && echo "$d running (pid $(pid_of "$d"))" || echo "$d stopped"; done
          alive slurmctld && echo "node: $(node_state)" ;;
  *) echo "usage: $0 start|stop|env|status" >&2; exit 2 ;;
esac
