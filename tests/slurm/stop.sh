#!/usr/bin/env bash
# Stop the test SLURM started by tests/slurm/start.sh: cancel jobs, then the daemons in reverse
# order (slurmd, slurmctld, slurmdbd, mariadbd, munged), each by its pid file.
D=${QUANTSWEEP_SLURM_DIR:-/tmp/quantsweep-slurm}
export SLURM_CONF=$D/slurm.conf
[ -f "$SLURM_CONF" ] && timeout 10 scancel --user=root >/dev/null 2>&1
for daemon in slurmd slurmctld slurmdbd mariadbd munged; do
  pidfile=$D/run/$daemon.pid
  [ -f "$pidfile" ] || continue
  pid=$(cat "$pidfile")
  kill "$pid" 2>/dev/null || continue
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null
done
exit 0
