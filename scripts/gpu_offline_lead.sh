#!/usr/bin/env bash
# Issue 16's rows on one GPU (docs/benchmarks.md, section 1d), step by step:
#   capped    12,288 KV tokens: vbatch (peak and paced admission) against pre-sorted
#             LLM.generate on W1 and MP, one model load
#   uncapped  the same rows with the GPU's whole KV cache
#   first     time to the first result of the real CLI on a 2,000-line capped W1 file
#   pyspy     an uncapped W1 run under py-spy (where the host path spends its time); PYSPY=BINARY
#   other     uncapped again with another tree first on PYTHONPATH; OTHER=DIR holding its vbatch/
# Rows land in $RESULTS (default /var/tmp/results/offline-lead).
#
#   bash scripts/gpu_offline_lead.sh capped uncapped first     (repo root, the kit's env.sh sourced)
set -uo pipefail
results=${RESULTS:-/var/tmp/results/offline-lead}
model=${MODEL:-/var/tmp/models/mistral-7b}
rows=${ROWS:-generate-sorted,vbatch,vbatch@paced}
mkdir -p "$results"
step() { echo "== $(date +%T) $*"; "$@" || echo "== step failed ($?): $*"; }
lead() {  # lead SETTING OUT ROWS: one model load, W1 then MP (1,000 requests)
    step python3 scripts/bench_gpu_w1.py inproc --setting "$1" --workload w1,mp --model "$model" --rows "$3" --out "$2"
}
for name in "$@"; do
    case "$name" in
    capped | uncapped) lead "$name" "$results" "$rows" ;;
    first) step python3 scripts/bench_gpu_batch_server.py --model "$model" --skip-api --label main \
        --out "$results/first-result" ;;
    pyspy)
        mkdir -p "$results/pyspy"
        step "${PYSPY:?PYSPY names the py-spy binary}" record --rate 50 --format speedscope \
            -o "$results/pyspy/uncapped-w1.speedscope.json" -- python3 scripts/bench_gpu_w1.py inproc \
            --setting uncapped --workload w1 --model "$model" --rows vbatch,generate-sorted --out "$results/pyspy" ;;
    other)
        mkdir -p "$results/other"
        PYTHONPATH=${OTHER:?OTHER names a folder holding another vbatch/}:$PYTHONPATH \
            lead uncapped "$results/other" vbatch,generate-sorted ;;
    *) echo "gpu_offline_lead.sh: unknown step $name" >&2 ;;
    esac
done
echo "== $(date +%T) done"
