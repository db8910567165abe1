#!/usr/bin/env bash
# HyperPod's OnCreate entry point: runs as root on every node while it boots, from a copy of
# the lifecycle prefix in S3. All the work happens in node_setup.py (Python standard library
# only); this wrapper makes sure that even a node without a usable Python leaves a log line
# saying why, instead of the empty logs that make lifecycle failures hard to diagnose.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="${LLAMAPOD_ROOT:-/}"
log_file="${LLAMAPOD_LOG_FILE:-${LLAMAPOD_LOG_DIR:-${root%/}/var/log}/llamapod/lifecycle.log}"
python="${LLAMAPOD_PYTHON:-/usr/bin/python3}"

say() {
  local line
  line="$(date -u +%Y-%m-%dT%H:%M:%S) on_create.sh: $*"
  echo "$line"
  if mkdir -p "$(dirname "$log_file")" 2>/dev/null; then
    echo "$line" >>"$log_file" 2>/dev/null || true
  fi
}

if [ ! -x "$python" ]; then
  say "ERROR: $python not found; llamapod's lifecycle needs Python 3.8 or newer (standard library only)"
  exit 1
fi
if ! "$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 8) else 1)'; then
  say "ERROR: $("$python" -V 2>&1) is too old; llamapod's lifecycle needs Python 3.8 or newer"
  exit 1
fi

say "running $here/node_setup.py $*"
status=0
"$python" "$here/node_setup.py" "$@" || status=$?
if [ "$status" -ne 0 ]; then
  say "ERROR: node setup failed with exit code $status; see $log_file"
fi
exit "$status"
