#!/usr/bin/env bash
# A real single-node Slurm (slurmctld + slurmd + munge, and slurmdbd + MariaDB so that
# `sacct` works) with fake GPUs, for tests/test_slurm.py and for trying profiles/slurm
# on one machine. Debian/Ubuntu, run as root; no systemd needed. Idempotent.
#
#   bash tests/slurm/start_slurm.sh          # install (apt), configure, start
#   bash tests/slurm/stop_slurm.sh           # stop what this script started
#
# Knobs (environment): WITH_DBD=1|0 (0: no sacct; then profiles need
# `slurm-status-command: squeue`, or Snakemake never sees a job end), FAKE_GPUS=2 (0 = none),
# GPU_TYPE= (e.g. a100), PARTITIONS="debug" (first = default), NODE_CPUS / NODE_MEM_MB (what
# the node advertises, default at least 16 and 65536 so that what profiles/slurm asks of one
# job schedules; more than the machine has is fine, nothing enforces it), SLURM_STARTED_FILE
# (where the daemons this run started are recorded, "name pid pidfile" a line, for
# stop_slurm.sh; default /run/pipeline-slurm/started).
#
# Never breaks a Slurm already there: a running Slurm whose slurm.conf was written by
# this script is reused as it is (nothing restarted, nothing recorded); a running or
# installed Slurm with any other slurm.conf is left alone and the script exits 3.
# Exit codes: 0 up (node idle), 2 not root / no apt-get, 3 foreign Slurm, 4 install failed,
# 1 anything else (see the daemon logs in /var/log/slurm/).
#
# Pitfalls this recipe avoids: a GPU GRES without File= is dropped and drains the node (fake
# GPUs are char devices cloned from /dev/null); without DefMemPerCPU a job without --mem takes
# the whole node; sbatch rejects requests larger than the node (SlurmdParameters=
# config_overrides lets it advertise more); `sacct` needs slurmdbd; no systemd here, so each
# daemon is started directly (each forks and writes its pid file).
set -euo pipefail
WITH_DBD=${WITH_DBD:-1}; FAKE_GPUS=${FAKE_GPUS:-2}; GPU_TYPE=${GPU_TYPE:-}; PARTITIONS=${PARTITIONS:-debug}
STARTED=${SLURM_STARTED_FILE:-/run/pipeline-slurm/started}
MARKER="# written by tests/slurm/start_slurm.sh (robust-ft-pipeline)"
CONF=/etc/slurm/slurm.conf
export DEBIAN_FRONTEND=noninteractive

[ "$(id -u)" = 0 ] || { echo "start_slurm: must run as root" >&2; exit 2; }
mkdir -p "$(dirname "$STARTED")"; touch "$STARTED"

alive() { [ -f "$1" ] && kill -0 "$(cat "$1" 2>/dev/null)" 2>/dev/null; }
record() {  # name pidfile: note a daemon this run started
  for i in $(seq 1 40); do [ -s "$2" ] && break; sleep 0.25; done
  echo "$1 $(cat "$2") $2" >> "$STARTED"; echo "start_slurm: started $1 (pid $(cat "$2"))"
}
ours() { [ -f "$CONF" ] && grep -qF "$MARKER" "$CONF"; }

if [ -f "$CONF" ] && ! ours; then
  echo "start_slurm: $CONF exists and was not written by this script; leaving that Slurm alone" >&2; exit 3
fi
if alive /run/slurmctld.pid && ! ours; then
  echo "start_slurm: a slurmctld is running with another configuration; leaving it alone" >&2; exit 3
fi

# --- packages --------------------------------------------------------------------------------
pkgs="slurmctld slurmd slurm-client munge"; [ "$WITH_DBD" = 1 ] && pkgs="$pkgs slurmdbd mariadb-server"
missing=""; for p in $pkgs; do case "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" in *"ok installed"*) ;; *) missing="$missing $p";; esac; done
if [ -n "$missing" ]; then
  command -v apt-get >/dev/null || { echo "start_slurm: no apt-get to install$missing" >&2; exit 2; }
  echo "start_slurm: installing$missing"
  { apt-get install -y -qq --no-install-recommends $missing >/dev/null 2>&1 ||
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends $missing >/dev/null; }; } ||
    { echo "start_slurm: apt-get install$missing failed" >&2; exit 4; }
fi

# --- munge -----------------------------------------------------------------------------------
[ -s /etc/munge/munge.key ] || { dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 2>/dev/null
  chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
mkdir -p /run/munge && chown munge:munge /run/munge
if ! alive /run/munge/munged.pid; then runuser -u munge -- /usr/sbin/munged; record munged /run/munge/munged.pid; fi
munge -n | unmunge >/dev/null

# --- configuration (only when slurmctld is not already running with it) ------------------------
H=$(hostname -s)
if ! alive /run/slurmctld.pid; then
  # by default at least 16 CPUs and 64 GB: what profiles/slurm asks of one job (8 CPUs, 16 GB) fits
  MEM=${NODE_MEM_MB:-$(free -m | awk '/^Mem:/{m=int($2*0.9); print (m > 65536 ? m : 65536)}')}
  NCPU=${NODE_CPUS:-$(nproc)}; [ -n "${NODE_CPUS:-}" ] || [ "$NCPU" -ge 16 ] || NCPU=16
  GRES_NODE=""   # fake GPUs: char devices cloned from /dev/null (slurmd drops a GPU without File=)
  if [ "$FAKE_GPUS" -gt 0 ]; then
    for i in $(seq 0 $((FAKE_GPUS-1))); do [ -e /dev/fakegpu$i ] || mknod -m 666 /dev/fakegpu$i c 1 3; done
    GRES_NODE="Gres=gpu:${GPU_TYPE:+$GPU_TYPE:}${FAKE_GPUS}"
    echo "NodeName=${H} Name=gpu ${GPU_TYPE:+Type=$GPU_TYPE }File=/dev/fakegpu[0-$((FAKE_GPUS-1))]" > /etc/slurm/gres.conf
  else : > /etc/slurm/gres.conf; fi
  mkdir -p /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
  if [ "$WITH_DBD" = 1 ]; then ACCT="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
AccountingStorageTRES=gres/gpu"; else ACCT="AccountingStorageType=accounting_storage/none"; fi
  cat > "$CONF" <<CONF
$MARKER
ClusterName=localcluster
SlurmctldHost=${H}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
${ACCT}
JobCompType=jobcomp/none
MpiDefault=none
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=600
SlurmctldTimeout=30
SlurmdTimeout=30
GresTypes=gpu
NodeName=${H} NodeAddr=127.0.0.1 CPUs=${NCPU} RealMemory=${MEM} ${GRES_NODE} State=UNKNOWN
CONF
  d=YES; for p in $PARTITIONS; do echo "PartitionName=$p Nodes=ALL Default=$d MaxTime=INFINITE State=UP" >> "$CONF"; d=NO; done
fi

# --- accounting: MariaDB + slurmdbd ----------------------------------------------------------
if [ "$WITH_DBD" = 1 ]; then
  mkdir -p /run/mysqld /var/log/slurm && chown mysql:mysql /run/mysqld
  if ! mariadb -e 'select 1' >/dev/null 2>&1; then
    setsid /usr/sbin/mariadbd --user=mysql --pid-file=/run/mysqld/mysqld.pid --socket=/run/mysqld/mysqld.sock \
      --bind-address=127.0.0.1 >/var/log/slurm/mariadb.log 2>&1 </dev/null &
    for i in $(seq 1 120); do mariadb -e 'select 1' >/dev/null 2>&1 && break; sleep 0.5; done
    record mariadbd /run/mysqld/mysqld.pid
  fi
  mariadb -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db; CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmpw'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
  if [ ! -f /etc/slurm/slurmdbd.conf ] || grep -qF "$MARKER" /etc/slurm/slurmdbd.conf; then
    cat > /etc/slurm/slurmdbd.conf <<CONF
$MARKER
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
PidFile=/run/slurmdbd.pid
LogFile=/var/log/slurm/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StoragePort=3306
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=slurmpw
CONF
    chmod 600 /etc/slurm/slurmdbd.conf
  fi
  if ! alive /run/slurmdbd.pid; then /usr/sbin/slurmdbd; record slurmdbd /run/slurmdbd.pid; fi
  for i in $(seq 1 60); do sacctmgr -n show cluster >/dev/null 2>&1 && break; sleep 0.5; done
  case " $(sacctmgr -n -P show cluster format=cluster 2>/dev/null | xargs) " in
    *" localcluster "*) ;; *) sacctmgr -i add cluster localcluster >/dev/null;; esac
fi

# --- slurmctld + slurmd (each daemonizes and writes /run/*.pid) --------------------------------
if ! alive /run/slurmctld.pid; then /usr/sbin/slurmctld; record slurmctld /run/slurmctld.pid; fi
if ! alive /run/slurmd.pid; then /usr/sbin/slurmd; record slurmd /run/slurmd.pid; fi
for i in $(seq 1 120); do
  st=$(sinfo -h -N -o %T 2>/dev/null | sort -u | xargs || true); [ "$st" = idle ] || [ "$st" = mixed ] && break
  case "$st" in *drain*|*inval*|*down*) scontrol update nodename="$H" state=resume 2>/dev/null || true;; esac; sleep 0.5
done
sinfo -N -o '%N %P %T %c %m %G'
st=$(sinfo -h -N -o %T | sort -u | xargs); [ "$st" = idle ] || [ "$st" = mixed ] || [ "$st" = allocated ] ||
  { echo "start_slurm: node state '$st'; see /var/log/slurm/" >&2; exit 1; }
