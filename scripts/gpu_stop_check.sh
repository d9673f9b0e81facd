#!/usr/bin/env bash
# On the lent H200, after the kit's call 1 (stash + make_model.py small), carried with .gpukit/p2:
# a `vbatch run` killed with SIGKILL, then one stopped with SIGTERM, must leave no engine process
# and give the GPU memory back within seconds; the rerun completes every line exactly once.
# docs/gpu.md has the result.
set -u
bash .gpukit/bin/install.sh >/dev/null && . /var/tmp/kit/env.sh && export PYTHONPATH=$PWD:${PYTHONPATH:-}
cat > /tmp/p.toml <<'TOML'
model = "/var/tmp/models/small"
served_model_name = "small"
[engine]
max_model_len = 2048
gpu_memory_utilization = 0.5
enforce_eager = true
[batch]
flush_every = 8
flush_seconds = 0.2
TOML
python3 - <<'PY'
import json
with open("/tmp/big.jsonl", "w") as f:
    for i in range(4000):
        f.write(json.dumps({"custom_id": f"r{i}", "messages": [{"role": "user", "content": f"question {i} " * 20}],
                            "max_tokens": 256, "ignore_eos": True, "temperature": 0}) + "\n")
PY
gpu_mem() { nvidia-smi --query-gpu=memory.used --format=csv,noheader | head -1; }
engine_procs() { pgrep -af "EngineCore|VllmWorker|vbatch run" | grep -v pgrep || echo "(none)"; }
wait_lines() {  # wait until FILE has N lines or the run ended
  for _ in $(seq 600); do
    [ -f "$1" ] && [ "$(wc -l < "$1")" -ge "$2" ] && return 0
    kill -0 "$3" 2>/dev/null || return 1
    sleep 0.5
  done
  return 1
}
RUN="python3 -m vbatch run /tmp/big.jsonl --profile /tmp/p.toml -o /tmp/out.jsonl -q --engine local"
echo "GPU memory before any run: $(gpu_mem)"

$RUN 2>/tmp/run1.err & VP=$!
wait_lines /tmp/out.jsonl 100 $VP || { echo "run 1 ended early"; tail -20 /tmp/run1.err; }
echo "run 1 at $(wc -l < /tmp/out.jsonl) results, GPU memory $(gpu_mem); SIGKILL to vbatch (pid $VP) only"
kill -9 $VP
for t in 2 5 10; do sleep $([ $t = 2 ] && echo 2 || echo 3); echo "  ${t}s after SIGKILL: GPU memory $(gpu_mem); processes: $(engine_procs | tr '\n' ';')"; done
tail -2 /tmp/run1.err

$RUN 2>/tmp/run2.err & VP=$!
before=$(wc -l < /tmp/out.jsonl)
wait_lines /tmp/out.jsonl $((before + 100)) $VP || { echo "run 2 ended early"; tail -20 /tmp/run2.err; }
echo "run 2 at $(wc -l < /tmp/out.jsonl) results, GPU memory $(gpu_mem); SIGTERM"
kill -TERM $VP; wait $VP; echo "  run 2 exit status $? ; message: $(tail -1 /tmp/run2.err)"
sleep 2; echo "  2s after: GPU memory $(gpu_mem); processes: $(engine_procs | tr '\n' ';')"

$RUN --json 2>/tmp/run3.err > /tmp/summary.json; echo "run 3 exit status $?"
python3 - <<'PY'
import json
s = json.load(open("/tmp/summary.json"))
ids = [json.loads(l)["custom_id"] for l in open("/tmp/out.jsonl")]
print("run 3 requests", s["requests"], "lines", len(ids), "unique", len(set(ids)), "tok/s", s["output_tokens_per_s"])
PY
echo "GPU memory after all runs: $(gpu_mem)"
