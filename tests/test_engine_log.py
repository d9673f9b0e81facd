"""vLLM's output goes to a log file in the state directory, not the terminal: `vbatch run -q`
prints nothing, --json prints the summary alone, and an error names the log (Output.engine_output)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vbatch.cli.options import ENGINE_LOGS_KEPT, engine_log_path
from vbatch.cli.output import Output
from vbatch.errors import EngineError

ROOT = Path(__file__).resolve().parent.parent


def test_engine_output_goes_to_the_log_and_vbatch_keeps_the_terminal(tmp_path, capfd):
    log = tmp_path / "logs" / "run.log"
    out = Output()
    with out.engine_output(log):
        os.write(1, b"engine stdout\n")
        os.write(2, b"engine stderr\n")
        print("a library's print", file=sys.__stdout__, flush=True)  # the process's stdout (pytest swaps sys.stdout)
        # what an engine process started meanwhile writes (it inherits the descriptors)
        subprocess.run([sys.executable, "-c", "import sys; print('child out'); print('child err', file=sys.stderr)"])
        out.status("vbatch: model loaded")
        out.notice("vbatch: a notice")
    captured = capfd.readouterr()
    assert captured.out == ""
    assert captured.err == "vbatch: model loaded\nvbatch: a notice\n"
    written = log.read_text()
    for line in ("engine stdout", "engine stderr", "a library's print", "child out", "child err"):
        assert line in written
    os.write(2, b"after\n")  # the terminal is back
    assert capfd.readouterr().err == "after\n"


def test_an_error_inside_names_the_log(tmp_path, capfd):
    log = tmp_path / "run.log"
    with pytest.raises(EngineError) as raised, Output().engine_output(log):
        os.write(2, b"Traceback ... CUDA out of memory\n")
        raise EngineError("could not load model 'x'", hint="lower max_model_len")
    assert raised.value.hint == f"lower max_model_len; vLLM's log: {log}"
    assert "CUDA out of memory" in log.read_text()
    assert capfd.readouterr().err == ""


def test_an_empty_log_is_not_kept(tmp_path):
    log = tmp_path / "run.log"
    with Output().engine_output(log):
        pass  # nothing loaded: an empty input, or a server did the work
    assert not log.exists()


def test_without_a_log_the_engine_writes_to_the_terminal_and_json_keeps_stdout(capfd):
    with Output().engine_output(None):
        os.write(1, b"to stdout\n")
    assert capfd.readouterr().out == "to stdout\n"
    with Output.of(json=True).engine_output(None):
        os.write(1, b"vllm says\n")
    captured = capfd.readouterr()
    assert (captured.out, captured.err) == ("", "vllm says\n")


def test_log_path_is_new_in_the_state_directory_and_old_ones_go(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    monkeypatch.delenv("VBATCH_DEBUG", raising=False)
    logs = tmp_path / "vbatch" / "logs"
    logs.mkdir(parents=True)
    for n in range(ENGINE_LOGS_KEPT + 5):
        old = logs / f"run-{n:03d}.log"
        old.write_text("x")
        os.utime(old, (n, n))
    path = engine_log_path("run", verbose=False)
    assert path is not None and path.parent == logs and path.name.startswith("run-")
    kept = sorted(p.name for p in logs.glob("*.log"))
    assert len(kept) == ENGINE_LOGS_KEPT - 1  # with the new one, ENGINE_LOGS_KEPT
    assert kept[0] == f"run-{6:03d}.log"  # the oldest went
    assert engine_log_path("run", verbose=True) is None
    monkeypatch.setenv("VBATCH_DEBUG", "1")
    assert engine_log_path("run", verbose=False) is None


def vbatch(*args: str, state: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, XDG_STATE_HOME=str(state))
    env.pop("VBATCH_DEBUG", None)
    env.pop("VLLM_LOGGING_LEVEL", None)
    return subprocess.run(
        [sys.executable, "-m", "vbatch", *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600
    )


def test_run_on_the_real_engine_prints_only_its_summary(tmp_path):
    """The CPU engine's ~20 lines of warnings, torch's and the resource tracker's included, go to
    the log; stdout holds the JSON summary alone, stderr nothing."""
    result = vbatch(
        "run", "examples/chat.jsonl", "--profile", "cpu-chat", "-o", str(tmp_path / "out.jsonl"), "--json", "-q",
        state=tmp_path / "state",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert json.loads(result.stdout)["requests"]["ok"] == 5
    (log,) = (tmp_path / "state" / "vbatch" / "logs").glob("run-*.log")
    written = log.read_text()
    assert "Resolved architecture: LlamaForCausalLM" in written  # vLLM's INFO lines, kept for diagnosis
    assert "WARNING" in written


def test_a_model_that_does_not_load_names_the_log(tmp_path):
    result = vbatch(
        "run", "examples/chat.jsonl", "--profile", "cpu-chat", "-E", "max_model_len=999999",
        "-o", str(tmp_path / "out.jsonl"), "-q",
        state=tmp_path / "state",
    )  # fmt: skip
    assert result.returncode == 5
    (log,) = (tmp_path / "state" / "vbatch" / "logs").glob("run-*.log")
    assert f"vLLM's log: {log}" in result.stderr
    assert "max_model_len" in log.read_text()
    assert "Traceback" not in result.stderr and "INFO" not in result.stderr
