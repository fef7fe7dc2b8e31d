#!/usr/bin/env bash
# with-emulator.sh CMD [ARGS...]
# Start one moto emulator (infra/emulator.py), run CMD with
# CUSTODY_EMULATOR_ENDPOINT set to it, stop the emulator, exit with CMD's status.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="$root/.venv/bin/python"
if (($# == 0)); then
  echo "usage: $0 CMD [ARGS...]" >&2
  exit 2
fi
if [[ ! -x "$py" ]]; then
  echo "with-emulator: $py missing; run infra/bootstrap.sh (make venv) first" >&2
  exit 1
fi

# The emulator runs with --watch-stdin as a coprocess: we hold the write end of
# its stdin, so it exits when we close it, or when this shell dies (even kill -9).
coproc EMU { exec "$py" "$root/infra/emulator.py" --watch-stdin; }
# bash unsets EMU once the coprocess is reaped: keep the pid and fd numbers.
emu_pid=$EMU_PID emu_in=${EMU[1]} emu_out=${EMU[0]}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  exec {emu_in}>&- # EOF on the emulator's stdin: it stops the server and exits
  # Give it a few seconds, then insist.
  for _ in {1..50}; do kill -0 "$emu_pid" 2>/dev/null || break; sleep 0.1; done
  kill -TERM "$emu_pid" 2>/dev/null || true
  wait "$emu_pid" 2>/dev/null || true
  exit "$rc"
}
trap cleanup EXIT
# Ctrl-C / SIGTERM: exit with the conventional status; the EXIT trap cleans up.
trap 'exit 130' INT
trap 'exit 143' TERM

if ! IFS= read -r -t 60 line <&"$emu_out"; then
  echo "with-emulator: emulator did not start (see its stderr above)" >&2
  exit 1
fi
exec {emu_out}<&-
# stdout contract: {"endpoint": "http://127.0.0.1:PORT", "pid": PID}
if [[ ! "$line" =~ \"endpoint\":\ *\"([^\"]+)\" ]]; then
  echo "with-emulator: unexpected emulator output: $line" >&2
  exit 1
fi
export CUSTODY_EMULATOR_ENDPOINT="${BASH_REMATCH[1]}"

# Not exec: the trap must run after CMD. (Coproc fds are close-on-exec, so CMD
# does not inherit our end of the emulator's stdin.)
rc=0
"$@" || rc=$?
exit "$rc"
