#!/usr/bin/env bash
# Install and start a real single-node SLURM (Debian 12: Slurm 22.05) with accounting, for tests:
# munged, MariaDB, slurmdbd, slurmctld and slurmd as root, without systemd, all state under
# $QUANTSWEEP_SLURM_DIR (default /tmp/quantsweep-slurm). Idempotent: returns at once when the
# cluster already answers. Prints the SLURM_CONF clients need; tests find it there too.
# Stop with tests/slurm/stop.sh.
set -euo pipefail

D=${QUANTSWEEP_SLURM_DIR:-/tmp/quantsweep-slurm}
CONF=$D/slurm.conf
export SLURM_CONF=$CONF

log() { echo "slurm: $*" >&2; }

if [ -f "$CONF" ] && timeout 10 sinfo -h -o %T 2>/dev/null | grep -qE 'idle|mixed|alloc'; then
  log "already running ($CONF)"; echo "SLURM_CONF=$CONF"; exit 0
fi
if [ "$(id -u)" != 0 ]; then log "needs root (apt, daemons)"; exit 1; fi

if ! command -v slurmctld >/dev/null || ! command -v slurmdbd >/dev/null \
   || ! command -v mariadbd >/dev/null || ! command -v munged >/dev/null; then
  log "installing packages"
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client slurmdbd \
    munge mariadb-server mariadb-client >/dev/null
fi

"$(dirname "$0")/stop.sh" >/dev/null 2>&1 || true
rm -rf "$D"
mkdir -p "$D"/{munge,state,spool,log,run,mysql}
chmod 755 "$D" "$D/munge"

# munge: its own key, socket and pid
dd if=/dev/urandom bs=1 count=1024 of="$D/munge/munge.key" status=none
chmod 400 "$D/munge/munge.key"
SOCK=$D/munge/munge.socket
munged --force --key-file="$D/munge/munge.key" --socket="$SOCK" \
  --pid-file="$D/run/munged.pid" --log-file="$D/log/munged.log" --seed-file="$D/munge/seed"

# MariaDB on 127.0.0.1:3307, private datadir
mariadb-install-db --user=root --datadir="$D/mysql" --auth-root-authentication-method=normal \
  >"$D/log/mariadb-install.log" 2>&1
mariadbd --user=root --datadir="$D/mysql" --port=3307 --bind-address=127.0.0.1 \
  --socket="$D/run/mysql.sock" --pid-file="$D/run/mariadbd.pid" \
  --log-error="$D/log/mariadbd.log" --skip-grant-tables=0 &
for _ in $(seq 100); do [ -S "$D/run/mysql.sock" ] && break; sleep 0.1; done
mariadb --socket="$D/run/mysql.sock" -uroot <<'SQL'
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
FLUSH PRIVILEGES;
SQL

CPUS=$(nproc)
MEM=$(( $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) - 1024 ))

cat >"$D/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$SOCK
DbdHost=localhost
DbdPort=6819
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=3307
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
PidFile=$D/run/slurmdbd.pid
LogFile=$D/log/slurmdbd.log
EOF
chmod 600 "$D/slurmdbd.conf"

cat >"$CONF" <<EOF
ClusterName=quantsweep
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$SOCK,cred_expire=10
CredType=cred/munge
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
AccountingStoragePass=$SOCK
JobAcctGatherType=jobacct_gather/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=1000
EnforcePartLimits=ALL
KillWait=5
ReturnToService=2
SchedulerParameters=bf_interval=1,sched_interval=2
# each array task counts against MaxJobCount (default 10,000): sites that run large sweeps
# raise it, and so does this one (tests submit 10,000 held jobs); MaxArraySize stays 1001
MaxJobCount=100000
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool
SlurmctldPidFile=$D/run/slurmctld.pid
SlurmdPidFile=$D/run/slurmd.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF

slurmdbd  # reads slurmdbd.conf beside $SLURM_CONF
for _ in $(seq 100); do
  sacctmgr -i -n list cluster >/dev/null 2>&1 && break; sleep 0.2
done
sacctmgr -i add cluster quantsweep >/dev/null
slurmctld -f "$CONF"
slurmd -f "$CONF" -N localhost
for _ in $(seq 150); do
  if sinfo -h -o %T 2>/dev/null | grep -qE 'idle|mixed'; then
    log "up: $CPUS CPUs, $MEM MB ($CONF)"; echo "SLURM_CONF=$CONF"; exit 0
  fi
  sleep 0.2
done
log "did not come up; logs in $D/log"
tail -n 20 "$D"/log/*.log >&2 || true
exit 1
