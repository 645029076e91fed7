#!/usr/bin/env bash
# Runs one test N times while every core is kept busy by a spinning process, and prints how many runs passed:
# a test that fails only under load is a race in the code or in the test (the README's "Development" part).
#
#   bash benchmarks/repeat_under_load.sh TEST_ID [N]     e.g.
#   bash benchmarks/repeat_under_load.sh \
#       tests/test_launch.py::test_interrupted_launch_voids_running_trials_and_resumes 20
#
# The load is one busy loop per core (plain Python, so nothing to install); each run's output is kept in
# $TMPDIR/repeat-under-load/RUN.log and the failed runs are listed at the end. Exit status 0 only if all pass.
set -euo pipefail
cd "$(dirname "$0")/.."
test_id="${1:?usage: repeat_under_load.sh TEST_ID [N]}"
n="${2:-20}"
python=.venv/bin/python
logs="${TMPDIR:-/tmp}/repeat-under-load"
rm -rf "$logs" && mkdir -p "$logs"
spinners=()
for _ in $(seq "$(nproc)"); do
    "$python" -c 'while True: pass' &
    spinners+=("$!")
done
trap 'kill "${spinners[@]}" 2>/dev/null || true' EXIT
passed=0
failed=()
for i in $(seq "$n"); do
    if "$python" -m pytest -q -p no:cacheprovider "$test_id" >"$logs/$i.log" 2>&1; then
        passed=$((passed + 1))
    else
        failed+=("$logs/$i.log")
    fi
    echo "run $i/$n: $(tail -n 1 "$logs/$i.log")"
done
echo "passed $passed of $n under load ($(nproc) busy loops)"
for log in "${failed[@]}"; do echo "failed: $log"; done
[ "$passed" -eq "$n" ]
