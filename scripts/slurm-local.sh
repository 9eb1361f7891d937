#!/usr/bin/env bash
# A single-node Slurm on this machine, for the sweep tests (tests/sweep.rs):
#   scripts/slurm-local.sh start DIR   # munge, slurmctld and slurmd with DIR/slurm.conf;
#                                      # prints the SLURM_CONF line to export
#   scripts/slurm-local.sh stop DIR    # cancels its jobs and stops the daemons
# Needs Debian's slurmctld, slurmd, slurm-client and munge (scripts/test.sh installs
# them) and root (the daemons and the jobs run as root here).
set -euo pipefail
action="${1:?start or stop}"
dir="$(realpath -m "${2:?a folder for the cluster files}")"
conf="$dir/slurm.conf"

if [ "$action" = start ]; then
  for tool in munged slurmctld slurmd sbatch squeue; do
    command -v "$tool" >/dev/null || { echo "slurm-local: $tool is missing: apt-get install slurmctld slurmd slurm-client munge" >&2; exit 1; }
  done
  mkdir -p "$dir/state" "$dir/spool"
  if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    [ -s /etc/munge/munge.key ] || mungekey --create --force
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge /etc/munge/munge.key 2>/dev/null || true
    munged --force
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
  fi
  host="$(hostname -s)"
  cpus="$(nproc)"
  mem_mb="$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)"
  cat > "$conf" <<CONF
ClusterName=easel-test
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
SlurmctldPort=${SLURMCTLD_PORT:-16817}
SlurmdPort=${SLURMD_PORT:-16818}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
  export SLURM_CONF="$conf"
  slurmctld -c -f "$conf"
  slurmd -f "$conf"
  for _ in $(seq 100); do
    if sinfo -h -o %t 2>/dev/null | grep -q idle; then
      echo "SLURM_CONF=$conf"
      exit 0
    fi
    sleep 0.2
  done
  echo "slurm-local: the node did not come up; see $dir/slurmctld.log and $dir/slurmd.log" >&2
  exit 1
elif [ "$action" = stop ]; then
  export SLURM_CONF="$conf"
  scancel --full --quiet --user=root 2>/dev/null || true
  for d in slurmd slurmctld; do
    [ -s "$dir/$d.pid" ] && kill "$(cat "$dir/$d.pid")" 2>/dev/null || true
  done
else
  echo "usage: $0 start|stop DIR" >&2
  exit 2
fi
