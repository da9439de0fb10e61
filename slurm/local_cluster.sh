#!/bin/bash
# A single-node SLURM on this machine, for `make slurm-test` (Debian/Ubuntu, as root):
#   apt-get install -y slurm-wlm munge
#   bash slurm/local_cluster.sh start     # munged, slurmctld, slurmd; partition "debug"
#   FGEXP_SRUN_MPI=pmi2 make slurm-test
#   bash slurm/local_cluster.sh stop
# No systemd is needed: the daemons are started directly and their pids kept in /run.
# CPU-only: jobs get no GPUs (the tests set FGEXP_GPUS_PER_TASK empty).
set -euo pipefail

conf=/etc/slurm/slurm.conf
host=$(hostname -s)

write_conf() {
    local cpus mem
    cpus=$(nproc)
    mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 8 / 10 ))  # MiB, 80%
    mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge
    chown slurm:slurm /var/spool/slurmctld /var/log/slurm
    chown munge:munge /run/munge
    cat > "$conf" <<CONF
# written by fgexp slurm/local_cluster.sh: one node, one partition, no accounting, no cgroups
ClusterName=fgexp-local
SlurmctldHost=$host
SlurmUser=slurm
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
# OverSubscribe lets a 4-rank job and several array elements share a small machine.
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF
}

case "${1:-}" in
    start)
        command -v slurmctld >/dev/null || { echo "error: apt-get install slurm-wlm munge first" >&2; exit 2; }
        [[ -f "$conf" ]] || write_conf
        [[ -f /etc/munge/munge.key ]] || { echo "error: no /etc/munge/munge.key" >&2; exit 2; }
        pgrep -x munged >/dev/null || su -s /bin/sh munge -c /usr/sbin/munged
        pgrep -x slurmctld >/dev/null || /usr/sbin/slurmctld
        sleep 2
        pgrep -x slurmd >/dev/null || /usr/sbin/slurmd
        sleep 2
        sinfo
        ;;
    stop)
        for pidfile in /run/slurmd.pid /run/slurmctld.pid; do
            [[ -f "$pidfile" ]] && kill "$(cat "$pidfile")" 2>/dev/null || true
        done
        [[ -f /run/munge/munged.pid ]] && kill "$(cat /run/munge/munged.pid)" 2>/dev/null || true
        ;;
    conf) write_conf; cat "$conf" ;;
    *) echo "usage: bash slurm/local_cluster.sh start|stop|conf" >&2; exit 2 ;;
esac
