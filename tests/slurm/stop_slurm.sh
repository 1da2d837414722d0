#!/usr/bin/env bash
# Stop the daemons that tests/slurm/start_slurm.sh started, newest first, each by the pid
# it recorded (never by name). A pid is signalled only while its pid file still holds it
# and the process is still that daemon, so a recycled pid or a daemon started by someone
# else is left alone. Idempotent: the record is emptied as daemons stop.
#   bash tests/slurm/stop_slurm.sh               # what the default record lists
#   SLURM_STARTED_FILE=/path bash tests/slurm/stop_slurm.sh
set -uo pipefail
STARTED=${SLURM_STARTED_FILE:-/run/pipeline-slurm/started}
[ -s "$STARTED" ] || { echo "stop_slurm: nothing recorded in $STARTED"; exit 0; }
tac "$STARTED" | while read -r name pid pidfile; do
  [ -n "${pid:-}" ] || continue
  if [ "$(cat "$pidfile" 2>/dev/null)" != "$pid" ] || ! grep -q "$name" "/proc/$pid/comm" 2>/dev/null; then
    echo "stop_slurm: $name (pid $pid) is not running"; continue
  fi
  kill "$pid" 2>/dev/null || continue
  for i in $(seq 1 120); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  if kill -0 "$pid" 2>/dev/null; then
    echo "stop_slurm: $name (pid $pid) ignored SIGTERM for 30 s; SIGKILL"; kill -9 "$pid" 2>/dev/null
  else echo "stop_slurm: stopped $name (pid $pid)"; fi
done
: > "$STARTED"
