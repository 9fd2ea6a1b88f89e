#!/usr/bin/env bash
# Build and start a real LSF-family scheduler for tests: volclava (the maintained fork of
# OpenLava 2.0; LSF's commands and file formats) on this one host, as root, without systemd.
# Everything lives under $QUANTSWEEP_LSF_DIR (default /tmp/quantsweep-lsf): the build, the
# install (volclava/), its configuration (volclava/etc = LSF_ENVDIR), logs, spool and the pid
# file the daemons are stopped by (tests/lsf/stop.sh; never by name).
# Source: $VOLCLAVA_SRC (a source tree or tarball), else ../shared/vendor/volclava-*.tar.gz
# beside the repository. Idempotent: returns at once when the cluster already answers, and
# builds only when the installed build is not from the same source.
# Prints the LSF_ENVDIR clients need (and the PATH entry); tests find it there too.
set -euo pipefail

D=${QUANTSWEEP_LSF_DIR:-/tmp/quantsweep-lsf}
P=$D/volclava
ENVDIR=$P/etc
PORT=${QUANTSWEEP_LSF_PORT:-6322}  # four consecutive ports: lim, res, mbatchd, sbatchd
CLUSTER=quantsweep
HERE=$(cd "$(dirname "$0")" && pwd)
log() { echo "volclava: $*" >&2; }
env_line() { echo "LSF_ENVDIR=$ENVDIR"; echo "PATH=$P/bin:\$PATH"; }
answers() {
  [ -f "$ENVDIR/lsf.conf" ] || return 1
  LSF_ENVDIR=$ENVDIR timeout 10 "$P/bin/bhosts" 2>/dev/null | grep -qE '^\S+ +ok '
}

if answers; then log "already running ($ENVDIR)"; env_line; exit 0; fi
if [ "$(id -u)" != 0 ]; then log "needs root (daemons, apt)"; exit 1; fi

src=${VOLCLAVA_SRC:-}
if [ -z "$src" ]; then
  src=$(ls "$HERE"/../../../shared/vendor/volclava-*.tar.gz 2>/dev/null | head -n1 || true)
fi
if [ -z "$src" ] || [ ! -e "$src" ]; then
  log "no source: set VOLCLAVA_SRC or put volclava-*.tar.gz in ../shared/vendor"; exit 1
fi
stamp=$( (if [ -d "$src" ]; then (cd "$src" && git rev-parse HEAD 2>/dev/null || pwd); \
          else sha256sum "$src" | cut -d' ' -f1; fi) )

"$HERE/stop.sh" >/dev/null 2>&1 || true

if [ ! -x "$P/sbin/lim" ] || [ "$(cat "$P/.built-from" 2>/dev/null)" != "$stamp" ]; then
  need=(build-essential autoconf automake bison flex tcl-dev libncurses-dev libtirpc-dev
        libnsl-dev)
  if ! dpkg -s "${need[@]}" >/dev/null 2>&1; then
    log "installing build packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
  log "building from $src"
  t0=$(date +%s)
  rm -rf "$D/build" "$P"
  mkdir -p "$D/build/src"
  if [ -d "$src" ]; then cp -a "$src/." "$D/build/src/"
  else tar xzf "$src" -C "$D/build/src" --strip-components=1; fi
  (cd "$D/build/src" && ./bootstrap.sh --prefix="$P" && make -j"$(nproc)" && make install) \
    >"$D/build/build.log" 2>&1 || { log "build failed: see $D/build/build.log"; exit 1; }
  echo "$stamp" >"$P/.built-from"
  log "built in $(( $(date +%s) - t0 )) s"
fi

HOST=$(hostname)
if ! getent hosts "$HOST" >/dev/null; then echo "127.0.0.1 $HOST" >>/etc/hosts; fi
NCPU=$(nproc)
rm -rf "$D/run" "$D/log" "$D/tmp" "$D/spool" "$D/work"
mkdir -p "$D/run" "$D/log" "$D/tmp" "$D/spool" "$D/work/logdir" "$D/pim"
chmod 1777 "$D/tmp" "$D/spool"

cat >"$ENVDIR/lsf.conf" <<EOF
LSF_SERVERDIR=$P/sbin
LSF_BINDIR=$P/bin
LSF_ENVDIR=$ENVDIR
LSF_CONFDIR=$ENVDIR
LSB_CONFDIR=$ENVDIR
LSB_SHAREDIR=$D/work
LSF_LOGDIR=$D/log
LSF_LOG_MASK=LOG_WARNING
LSF_TMPDIR=$D/tmp
LSF_PIM_INFODIR=$D/pim
LSF_LIM_PORT=$PORT
LSF_RES_PORT=$((PORT + 1))
LSB_MBD_PORT=$((PORT + 2))
LSB_SBD_PORT=$((PORT + 3))
LSF_AUTH=eauth
LSF_ROOT_REX=local
LSB_MAILTO=!U
EOF
cat >"$ENVDIR/lsf.shared" <<EOF
Begin Cluster
ClusterName
$CLUSTER
End Cluster
Begin HostType
TYPENAME
linux
End HostType
Begin HostModel
MODELNAME  CPUFACTOR   ARCHITECTURE
generic    100         (x86_64)
End HostModel
Begin Resource
RESOURCENAME  TYPE    INTERVAL INCREASING  DESCRIPTION
   fs         Boolean ()       ()          (File server)
   cs         Boolean ()       ()          (Compute server)
End Resource
EOF
cat >"$ENVDIR/lsf.cluster.$CLUSTER" <<EOF
Begin   ClusterAdmins
Administrators = root
End    ClusterAdmins
Begin   Host
HOSTNAME   model   type   server  r1m  RESOURCES
$HOST      !       !      1       -    (cs)
End     Host
EOF
# CLEAN_PERIOD: finished jobs leave bjobs -a after this many seconds (LSF's default is 3600):
# short here, so that tests see a job the scheduler has forgotten
cat >"$ENVDIR/lsb.params" <<EOF
Begin Parameters
DEFAULT_QUEUE = normal
MBD_SLEEP_TIME = 2
SBD_SLEEP_TIME = 2
JOB_ACCEPT_INTERVAL = 0
CLEAN_PERIOD = ${QUANTSWEEP_LSF_CLEAN_PERIOD:-15}
MAX_JOB_ARRAY_SIZE = 1000
JOB_SPOOL_DIR = $D/spool
End Parameters
EOF
cat >"$ENVDIR/lsb.hosts" <<EOF
Begin Host
HOST_NAME  MXJ  JL/U  r1m  pg  ls  tmp  DISPATCH_WINDOW
default    $((NCPU < 2 ? 2 : NCPU))    ()    ()   ()  ()  ()   ()
End Host
EOF
{
  for q in normal short long gpu; do
    printf 'Begin Queue\nQUEUE_NAME = %s\nPRIORITY = 30\nDESCRIPTION = quantsweep tests\nEnd Queue\n\n' "$q"
  done
} >"$ENVDIR/lsb.queues"
[ -f "$ENVDIR/lsb.users" ] || printf 'Begin User\nUSER_NAME MAX_JOBS\ndefault ()\nEnd User\n' \
  >"$ENVDIR/lsb.users"

export LSF_ENVDIR=$ENVDIR
t0=$(date +%s)
# each daemon forks into the background; its pid is found by its executable's path, which
# lies in this private install (no other process runs it), and recorded for stop.sh
"$P/sbin/lim"; "$P/sbin/res"; "$P/sbin/sbatchd"
pids() {
  for exe in /proc/[0-9]*/exe; do
    t=$(readlink "$exe" 2>/dev/null || true)
    case "$t" in "$P/sbin/"*) p=${exe#/proc/}; echo "${p%/exe}";; esac
  done
}
for _ in $(seq 120); do answers && break; sleep 0.5; done
if ! answers; then log "not answering: see $D/log"; pids >"$D/run/pids"; exit 1; fi
# and a job runs
probe=$(cd "$D/tmp" && echo 'echo ok' | "$P/bin/bsub" -o "$D/tmp/probe.out" 2>&1 || true)
id=$(sed -n 's/.*Job <\([0-9]*\)>.*/\1/p' <<<"$probe")
[ -n "$id" ] || { log "bsub refused the probe: $probe"; exit 1; }
for _ in $(seq 120); do
  "$P/bin/bjobs" -a "$id" 2>/dev/null | grep -q ' DONE ' && break; sleep 0.5
done
pids >"$D/run/pids"
"$P/bin/bjobs" -a "$id" 2>/dev/null | grep -q ' DONE ' || { log "the probe job did not run"; exit 1; }
log "started in $(( $(date +%s) - t0 )) s (pids $(tr '\n' ' ' <"$D/run/pids"))"
env_line
