#!/usr/bin/env bash
# Stop the SLURM cluster started by start.sh: every node's slurmd, slurmctld, slurmdbd, then munged
# (only a munged that start.sh started). MariaDB is left running. Idempotent.
# Jobs still running keep running under their slurmstepd and are picked up again by the next start.sh;
# pass --cancel to cancel all jobs first.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
    exec sudo --preserve-env=SWEEP_SLURM_DIR,SWEEP_SLURM_CLUSTER "$0" "$@"
fi

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=common.sh source-path=SCRIPTDIR
source "$HERE/common.sh"

if [ "${1:-}" = --cancel ] && pid_alive "$DIR/run/slurmctld.pid" slurmctld; then
    mapfile -t jobs < <(squeue -h -o %A 2>/dev/null || true)
    if [ "${#jobs[@]}" -gt 0 ]; then
        log "cancelling ${#jobs[@]} job(s)"
        scancel "${jobs[@]}" 2>/dev/null || true
        # shellcheck disable=SC2016 # squeue runs in the child shell
        wait_for 20 "no jobs are left" bash -c '[ -z "$(squeue -h -o %A)" ]' || true
    fi
fi

# stop_daemons PIDFILE NAME [PIDFILE NAME ...]: SIGTERM them together, wait up to 15 s, then SIGKILL.
stop_daemons() {
    local pids=() pidfiles=() names=() i pid
    while [ "$#" -ge 2 ]; do
        if pid_alive "$1" "$2"; then
            pid="$(tr -dc 0-9 <"$1")"
            log "stopping $2 (pid $pid)"
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$pid")
            names+=("$2")
        fi
        pidfiles+=("$1")
        shift 2
    done
    for ((i = 0; i < 60; i++)); do
        proc_alive_all_gone "${pids[@]}" && break
        sleep 0.25
    done
    for i in "${!pids[@]}"; do
        if proc_is "${pids[$i]}" "${names[$i]}"; then
            log "${names[$i]} did not stop in 15 s: killing it"
            kill -KILL "${pids[$i]}" 2>/dev/null || true
        fi
    done
    rm -f "${pidfiles[@]}"
}

# proc_alive_all_gone PID...: none of the pids is a live (non-zombie) process.
proc_alive_all_gone() {
    local pid
    for pid in "$@"; do
        [ -d "/proc/$pid" ] && ! grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null && return 1
    done
    return 0
}

# slurmd and slurmctld first (slurmctld saves its state), then what they talk to.
slurmds=()
for f in $(slurmd_pidfiles); do slurmds+=("$f" slurmd); done
stop_daemons "${slurmds[@]}" "$DIR/run/slurmctld.pid" slurmctld
if [ -e "$DIR/run/munged.ours" ]; then
    stop_daemons "$DIR/run/slurmdbd.pid" slurmdbd /run/munge/munged.pid munged
    rm -f "$DIR/run/munged.ours" /run/munge/munge.socket.2.lock
else
    stop_daemons "$DIR/run/slurmdbd.pid" slurmdbd
fi
log "stopped"
