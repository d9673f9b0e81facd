"""vbatch.cli.output.Output: what each mode writes where (stdout for documents, stderr for the
rest), and a command rendering through it end to end."""

from __future__ import annotations

import io
import json
import sys

import orjson
import pytest
from support.cli import vbatch

from vbatch.cli.output import Output
from vbatch.cli.progress import PlainReporter, RichReporter
from vbatch.services.reporting import Reporter, RunStats


@pytest.fixture(autouse=True)
def plain_rich(monkeypatch):
    """rich as it behaves in a log or pipe: no forced colours, its default width."""
    for name in ("FORCE_COLOR", "NO_COLOR", "COLUMNS", "LINES", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(name, raising=False)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def streams() -> tuple[io.StringIO, io.StringIO]:
    return io.StringIO(), io.StringIO()


def make(mode="human", **kwargs) -> tuple[Output, io.StringIO, io.StringIO]:
    stdout, stderr = streams()
    return Output(mode, stdout=stdout, stderr=stderr, **kwargs), stdout, stderr


def test_of_maps_json_and_quiet_to_a_mode():
    assert (Output.of().mode, Output.of().quiet) == ("human", False)
    assert (Output.of(json=True).mode, Output.of(json=True).quiet) == ("json", False)
    assert (Output.of(quiet=True).mode, Output.of(quiet=True).quiet) == ("quiet", True)
    # --json --quiet: the document on stdout, nothing on stderr
    assert (Output.of(json=True, quiet=True).mode, Output.of(json=True, quiet=True).quiet) == ("json", True)
    assert Output("quiet").quiet


def test_human_status_lines_go_to_stderr_rendered_and_whole():
    out, stdout, stderr = make()
    long_path = "/data/" + "x" * 200 + "/batch.jsonl"
    out.status(f"[green]ok[/]: 3 ok, 0 failed, results in {long_path}")
    out.say("bench: warming up [not markup]")
    out.notice("stopped (SIGTERM)")
    assert stdout.getvalue() == ""
    assert stderr.getvalue().splitlines() == [
        f"ok: 3 ok, 0 failed, results in {long_path}",  # markup applied, never wrapped at 80 columns
        "bench: warming up [not markup]",  # plain: brackets stay
        "stopped (SIGTERM)",
    ]
    assert "\x1b[" not in stderr.getvalue()  # no colour codes off a terminal


def test_quiet_keeps_only_notices_warnings_and_errors():
    out, stdout, stderr = make("quiet")
    out.status("[bold]job 1/2[/]: a.jsonl")
    out.say("bench: running")
    out.notice("bench: interrupted, no report written")
    out.warning("metrics not written to [x].prom", hint="check [its] directory")
    out.warning("no hint here")
    out.error("the model ran out of memory", hint="lower max_model_len")
    assert stdout.getvalue() == ""
    assert stderr.getvalue().splitlines() == [
        "bench: interrupted, no report written",
        "warning: metrics not written to [x].prom",  # markup in the message is escaped
        "hint: check [its] directory",
        "warning: no hint here",
        "error: the model ran out of memory",
        "hint: lower max_model_len",
    ]


def test_json_and_quiet_prints_the_document_alone():
    stdout, stderr = streams()
    out = Output.of(json=True, quiet=True, stdout=stdout, stderr=stderr)
    out.status("another drain (pid 7) is running; nothing to do")
    out.json({"requests": {"ok": 1}, "meta": {}})
    assert stderr.getvalue() == ""
    assert stdout.getvalue() == '{\n  "requests": {\n    "ok": 1\n  },\n  "meta": {}\n}\n'


def test_json_mode_still_shows_status_lines_on_stderr():
    out, stdout, stderr = make("json")
    out.status("nothing to do: no batch files (*.jsonl, *.jsonl.gz, *.parquet) in /inbox")
    out.json([1, 2.5, None])
    assert stderr.getvalue() == "nothing to do: no batch files (*.jsonl, *.jsonl.gz, *.parquet) in /inbox\n"
    assert json.loads(stdout.getvalue()) == [1, 2.5, None]


def test_json_bytes_are_orjson_indented_and_utf8_through_a_binary_stdout():
    raw = io.BytesIO()
    stdout = io.TextIOWrapper(raw, encoding="utf-8")
    document = {"input": "café.jsonl", "wall_seconds": 0.0, "tokens": {"prompt": 12}, "ratio": 1e-05}
    Output("json", stdout=stdout, stderr=io.StringIO()).json(document)
    assert raw.getvalue() == orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n"
    assert "café".encode() in raw.getvalue()  # not \u escaped


def test_error_escapes_markup_in_message_and_hint():
    out, _, stderr = make()
    out.error("line 3: [bold] is not JSON", hint="fix [that] line")
    out.error("no hint here")
    assert stderr.getvalue().splitlines() == [
        "error: line 3: [bold] is not JSON",
        "hint: fix [that] line",
        "error: no hint here",
    ]


def test_text_is_verbatim_on_stdout():
    out, stdout, stderr = make()
    out.text("# /etc/systemd/system/vbatch-serve.service\n[Unit]", end="")
    out.text("0 2 * * * cd /x && vbatch drain /inbox")
    assert (
        stdout.getvalue()
        == "# /etc/systemd/system/vbatch-serve.service\n[Unit]0 2 * * * cd /x && vbatch drain /inbox\n"
    )
    assert stderr.getvalue() == ""


def test_reporter_follows_mode_and_terminal():
    assert type(make("quiet")[0].reporter()) is Reporter
    assert type(Output.of(json=True, quiet=True, stderr=io.StringIO()).reporter()) is Reporter

    plain, _, stderr = make(progress_interval=0.0)
    assert not plain.rich_progress
    reporter = plain.reporter()
    assert isinstance(reporter, PlainReporter)
    stats = RunStats(total=4, ok=3, failed=1)
    reporter.phase("checking input")
    reporter.stop(stats)
    lines = stderr.getvalue().splitlines()
    assert lines[0] == "vbatch: checking input"
    assert lines[1].startswith("vbatch: 4/4 done (100%), 1 failed, ")

    terminal = Output(stdout=io.StringIO(), stderr=Terminal())
    assert terminal.rich_progress and isinstance(terminal.reporter(), RichReporter)
    assert not Output("quiet", stderr=Terminal()).rich_progress


def test_stdout_is_terminal_decides_table_or_columns():
    assert Output(stdout=Terminal()).stdout_is_terminal
    assert not Output(stdout=io.StringIO()).stdout_is_terminal


def test_page_is_a_stdout_console_with_rich_defaults_or_a_set_width_off_a_terminal():
    out, stdout, stderr = make()
    page = out.page()
    assert page.width == 80 and not page.is_terminal
    page.print("x " * 60)  # rich's defaults: wrapped at 80 columns, as a table would be
    assert len(stdout.getvalue().splitlines()) == 2
    assert out.page(width_off_terminal=160).width == 160
    out.page(stderr=True, highlight=False).print("report: /tmp/r.json")
    assert stderr.getvalue() == "report: /tmp/r.json\n"


# ---------------------------------------------------------------- a command through its Output


def test_run_json_quiet_and_human_on_an_empty_input(tmp_path):
    """An input without requests loads no model, so the whole CLI path is quick here."""
    src = tmp_path / "empty.jsonl"
    src.write_text("\n")
    args = ["run", str(src), "--profile", "cpu"]

    quiet_json = vbatch(*args, "--json", "--quiet")
    assert quiet_json.returncode == 0, quiet_json.stderr
    assert quiet_json.stderr == ""
    summary = json.loads(quiet_json.stdout)
    assert summary["requests"] == {"total": 0, "ok": 0, "failed": 0, "resumed": 0, "deduplicated": 0}
    assert "already_complete" not in summary

    again = vbatch(*args)  # human: the report on stderr, nothing on stdout
    assert again.returncode == 0, again.stderr
    assert again.stdout == ""
    assert "already complete: nothing left to do (use --restart to run again)" in again.stderr
    assert f"no requests: {src} is empty or holds only blank lines; the model was not loaded" in again.stderr

    quiet = vbatch(*args, "--quiet")
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")

    error = vbatch("run", str(tmp_path / "missing.jsonl"), "--profile", "cpu", "--quiet")
    assert error.returncode != 0 and error.stdout == ""
    assert error.stderr.startswith("error: ") and "missing.jsonl" in error.stderr


def test_the_error_map_prints_error_and_hint(tmp_path):
    proc = vbatch("run", str(tmp_path / "x.jsonl"), "--profile", "no-such-profile")
    assert proc.returncode == 3 and proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert lines[0].startswith("error: ") and "no-such-profile" in lines[0]
    assert any(line.startswith("hint: ") for line in lines[1:])
    assert "Traceback" not in proc.stderr


def test_no_cli_module_imports_click_or_another_commands_options():
    import ast
    from pathlib import Path

    cli = Path(sys.modules["vbatch.cli"].__file__).parent
    commands = {path.stem for path in cli.glob("*_cmd.py")}
    problems = []
    for path in cli.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                if name.split(".")[0] == "click":
                    problems.append(f"{path.name} imports click")
                if name.startswith("vbatch.cli.") and name.rpartition(".")[2] in commands:
                    problems.append(f"{path.name} imports {name}")
    assert not problems, problems
