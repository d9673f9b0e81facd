#!/usr/bin/env bash
# Issue 16's rows on one GPU, most important first (docs/benchmarks.md, section 1d):
#   capped (12,288 KV tokens) and uncapped: vbatch against pre-sorted LLM.generate on W1 and MP,
#   then the time to the first result of the real CLI on a 2,000-line capped W1 file.
# With OTHER=DIR (a folder holding another tree's vbatch/ package), the same rows again with that
# tree first on PYTHONPATH, into $RESULTS/other; with PYSPY=BINARY, last, an uncapped W1 run under
# py-spy (where the host path spends its time). Every step loads the model itself.
#
#   bash scripts/gpu_offline_lead.sh     (repo root, the kit's env.sh sourced; rows in $RESULTS)
set -uo pipefail
results=${RESULTS:-/var/tmp/results/offline-lead}
model=${MODEL:-/var/tmp/models/mistral-7b}
mp_n=${MP_N:-1000}
mkdir -p "$results"
step() { echo "== $(date +%T) $*"; "$@" || echo "== step failed ($?): $*"; }
lead() {  # lead SETTING OUT ROWS: one model load, W1 then MP
    step python3 scripts/bench_gpu_w1.py inproc --setting "$1" --workload w1,mp --mp-n "$mp_n" --model "$model" \
        --rows "$3" --out "$2"
}
first_result() { step python3 scripts/bench_gpu_batch_server.py --model "$model" --skip-api --label "$1" --out "$2"; }

lead capped "$results" generate-sorted,vbatch
lead uncapped "$results" generate-sorted,vbatch
first_result main "$results/first-result"
if [ -n "${OTHER:-}" ]; then
    mkdir -p "$results/other"
    PYTHONPATH=$OTHER:$PYTHONPATH lead uncapped "$results/other" vbatch,generate-sorted
    PYTHONPATH=$OTHER:$PYTHONPATH lead capped "$results/other" vbatch,generate-sorted
    PYTHONPATH=$OTHER:$PYTHONPATH first_result other "$results/first-result"
fi
if [ -n "${PYSPY:-}" ]; then
    mkdir -p "$results/pyspy"
    step "$PYSPY" record --rate 50 --format speedscope -o "$results/pyspy/uncapped-w1.speedscope.json" -- \
        python3 scripts/bench_gpu_w1.py inproc --setting uncapped --workload w1 --model "$model" \
        --rows vbatch,generate-sorted --out "$results/pyspy"
fi
echo "== $(date +%T) done"
