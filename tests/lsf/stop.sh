#!/usr/bin/env bash
# Stop the test volclava that tests/lsf/start.sh started: its jobs first, then its daemons by
# the pids it recorded (and any other process running this private install's daemons, found
# by executable path: mbatchd restarts under sbatchd). Never by name.
set -uo pipefail
D=${QUANTSWEEP_LSF_DIR:-/tmp/quantsweep-lsf}
P=$D/volclava
ours() {
  for exe in /proc/[0-9]*/exe; do
    t=$(readlink "$exe" 2>/dev/null || true)
    case "$t" in "$P/sbin/"*) p=${exe#/proc/}; echo "${p%/exe}";; esac
  done
}
if [ -f "$P/etc/lsf.conf" ] && [ -n "$(ours)" ]; then  # its daemons run: kill its jobs first
  LSF_ENVDIR=$P/etc timeout 10 "$P/bin/bkill" -u all 0 >/dev/null 2>&1 || true
fi
for sig in TERM KILL; do
  for pid in $(cat "$D/run/pids" 2>/dev/null) $(ours); do kill -"$sig" "$pid" 2>/dev/null; done
  for _ in $(seq 20); do [ -z "$(ours)" ] && break; sleep 0.25; done
done
rm -f "$D/run/pids"
