#!/usr/bin/env bash
# Smoke-check a running cluster (start.sh first): a plain job, a throttled job array, sacct, signals
# delivered with scancel --signal, and scontrol requeue. Prints one line per check; exits 1 if any failed.
# Takes about 30 s.
# shellcheck disable=SC2016,SC2317 # $VARS expand in the job; helpers are called through check()
set -uo pipefail
export PATH="$PATH:/usr/sbin:/usr/bin:/sbin:/bin"

work="$(mktemp -d /tmp/sweep-slurm-smoke.XXXXXX)"
chmod 0777 "$work"
failed=0
jobs_to_cancel=()
trap '[ "${#jobs_to_cancel[@]}" -eq 0 ] || scancel "${jobs_to_cancel[@]}" 2>/dev/null; rm -rf "$work"' EXIT

check() { # check NAME CONDITION...
    local name="$1"
    shift
    if "$@"; then echo "PASS $name"; else echo "FAIL $name"; failed=1; fi
}

# wait_state JOBID STATE SECONDS: squeue shows the job (or every task of an array) in STATE.
wait_state() {
    local i
    for ((i = 0; i < $3 * 4; i++)); do
        [ "$(squeue -h -j "$1" -o %T 2>/dev/null | sort -u)" = "$2" ] && return 0
        sleep 0.25
    done
    return 1
}

# sacct_done JOBID: every allocation of the job is COMPLETED in accounting (waits up to 20 s).
sacct_done() {
    local i states
    for ((i = 0; i < 80; i++)); do
        states="$(sacct -j "$1" -X -n -P --format=State 2>/dev/null | sort -u)"
        [ "$states" = COMPLETED ] && return 0
        sleep 0.25
    done
    echo "    sacct -j $1: $(sacct -j "$1" -n -P --format=JobID,State 2>&1 | tr '\n' ' ')"
    return 1
}

# 1. a plain job
j=$(sbatch --parsable -o "$work/host-%j.out" --wrap 'hostname -s')
check "sbatch --wrap hostname: job $j COMPLETED in sacct" sacct_done "$j"
check "its output names this host" grep -qx "$(hostname -s)" "$work/host-$j.out"

# 2. a 3-task array, at most 2 at once
a=$(sbatch --parsable -o "$work/arr-%A_%a.out" --array=0-2%2 --wrap 'sleep 1; echo $SLURM_ARRAY_TASK_ID')
check "squeue shows array $a while it runs" bash -c "squeue -h -j $a -o %i | grep -q ${a}_"
check "array $a: all tasks COMPLETED in sacct" sacct_done "$a"
check "array $a: each task wrote its index" bash -c "[ \"\$(cat $work/arr-${a}_{0,1,2}.out | tr -d '\n')\" = 012 ]"

# 3. scancel --signal=USR1: with and without --batch, to a batch shell and to an srun step
cat >"$work/trap.sh" <<EOF
#!/bin/bash
trap 'echo got-usr1 > $work/usr1-\$1' USR1
for i in \$(seq 1 60); do sleep 1; done
EOF
chmod +x "$work/trap.sh"
signal_case() { # signal_case NAME WRAP SCANCEL_FLAGS...
    local name="$1" wrap="$2" s
    shift 2
    s=$(sbatch --parsable -o /dev/null --wrap "$wrap")
    jobs_to_cancel+=("$s")
    wait_state "$s" RUNNING 20 && sleep 1 # let bash install its trap
    scancel "$@" --signal=USR1 "$s"
    for ((i = 0; i < 12; i++)); do
        [ -s "$work/usr1-$name" ] && break
        sleep 0.25
    done
    scancel "$s" 2>/dev/null
    [ -s "$work/usr1-$name" ]
}
check "scancel --signal=USR1 reaches a process in an srun step" \
    signal_case step "srun $work/trap.sh step"
check "scancel --batch --signal=USR1 reaches the batch shell" \
    signal_case batch "exec $work/trap.sh batch" --batch
check "scancel --full --signal=USR1 reaches the batch shell" \
    signal_case full "exec $work/trap.sh full" --full
if signal_case plain "exec $work/trap.sh plain"; then
    echo "NOTE plain scancel --signal=USR1 reached the batch shell"
else
    echo "NOTE plain scancel --signal=USR1 does not reach the batch shell (SLURM signals steps only): expected"
fi

# 4. scontrol requeue of a --requeue job: it runs again with SLURM_RESTART_COUNT=1
r=$(sbatch --parsable --requeue -o /dev/null \
    --wrap "echo run-\${SLURM_RESTART_COUNT:-0} >> $work/requeue.log; sleep 30")
jobs_to_cancel+=("$r")
wait_state "$r" RUNNING 20
sleep 1
scontrol requeue "$r"
t0=$(date +%s)
sleep 1
check "scontrol requeue: job $r runs again" wait_state "$r" RUNNING 40
sleep 1
check "  ... as its second run (log: $(tr '\n' ' ' <"$work/requeue.log" 2>/dev/null), after $(($(date +%s) - t0)) s)" \
    grep -qx run-1 "$work/requeue.log"

exit "$failed"
