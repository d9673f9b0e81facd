#!/usr/bin/env bash
# Background jobs on the device machine that outlive a `run` call (the machine stays warm while
# calls follow each other), each on its own GPU and CPUs, so two measurements can share a
# two-GPU machine without sharing cores.
#
#   bash scripts/gpu_jobs.sh start NAME CPUS GPU COMMAND...   e.g. start profiles 16-31 1 python3 ...
#   bash scripts/gpu_jobs.sh wait LIMIT_S NAME...             until every NAME ended, or LIMIT_S
#   bash scripts/gpu_jobs.sh status NAME...                   running / exit status, log tail
#
# Logs in /var/tmp/jobs/NAME.log, exit status in /var/tmp/jobs/NAME.rc when it ends.
set -uo pipefail
jobs=/var/tmp/jobs
mkdir -p "$jobs"
action=${1:?start, wait or status}
shift
case "$action" in
start)
    name=$1 cpus=$2 gpu=$3
    shift 3
    rm -f "$jobs/$name.rc"
    # setsid: the job survives the end of the call that started it.
    CUDA_VISIBLE_DEVICES=$gpu setsid taskset -c "$cpus" bash -c '"$@"; echo $? > '"$jobs/$name.rc" _ "$@" \
        > "$jobs/$name.log" 2>&1 < /dev/null &
    echo "started $name on GPU $gpu, CPUs $cpus: $*"
    ;;
wait)
    limit=$1
    shift
    started=$(date +%s)
    for name in "$@"; do
        while [ ! -f "$jobs/$name.rc" ] && [ $(( $(date +%s) - started )) -lt "$limit" ]; do sleep 5; done
    done
    bash "$0" status "$@"
    ;;
status)
    for name in "$@"; do
        if [ -f "$jobs/$name.rc" ]; then echo "== $name: exit $(cat "$jobs/$name.rc")"; else echo "== $name: running"; fi
        tail -n 4 "$jobs/$name.log" 2>/dev/null | cut -c1-300
    done
    ;;
*) echo "gpu_jobs.sh: unknown action $action" >&2; exit 2 ;;
esac
