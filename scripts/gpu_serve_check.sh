#!/usr/bin/env bash
# On the lent H200, after the kit's call 1 (stash + make_model.py small), carried with .gpukit/p2 and
# .gpukit/hotfix: vbatch serve on vLLM 0.26 answers a chat request, `vbatch run` (--engine auto) goes
# through it, and SIGTERM leaves no server behind. docs/gpu.md has the result.
set -u
bash .gpukit/bin/install.sh >/dev/null && . /var/tmp/kit/env.sh && export PYTHONPATH=$PWD:${PYTHONPATH:-}
cat > /tmp/p.toml <<'TOML'
model = "/var/tmp/models/small"
served_model_name = "small"
[engine]
max_model_len = 2048
gpu_memory_utilization = 0.5
[serve]
port = 8011
TOML
python3 -m vbatch serve --profile /tmp/p.toml --dry-run || exit 1
python3 -m vbatch serve --profile /tmp/p.toml -q > /tmp/serve.out 2>&1 &
SP=$!
python3 - <<'PY'
import time, httpx
for i in range(240):
    try:
        if httpx.get("http://127.0.0.1:8011/health", timeout=1).status_code == 200: break
    except Exception: pass
    time.sleep(1)
print("ready after", i, "s")
r = httpx.post("http://127.0.0.1:8011/v1/chat/completions", json={"model": "small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}, timeout=60).json()
print("chat usage", r.get("usage"))
PY
python3 -m vbatch run examples/chat.jsonl --profile /tmp/p.toml -o /tmp/r-server.jsonl --json 2>/tmp/run.err | python3 -c "import json,sys; s=json.load(sys.stdin); print('run via', s['engine'], s['requests'])" || tail -20 /tmp/run.err
kill -TERM $SP; wait $SP; echo "serve exit $?"; tail -3 /tmp/serve.out
pgrep -af "api_server" || echo "no server left"
