"""--metrics-textfile: a run's metrics for node_exporter's textfile collector, read back with
prometheus_client's own parser. The writer alone, then the real CLI (blank inputs and a corrupt
one: no model loads), then one real run on the tiny model."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.cli import user_env, vbatch
from support.jsonl import chat_line, write_lines

from vbatch.config.profiles import load_profile
from vbatch.errors import UsageError
from vbatch.services.reporting import RequestCounts, RunSummary, TokenCounts
from vbatch.services.run import RunSpec
from vbatch.services.textfile_metrics import MetricsTextfile, batch_label


def summary(ok: int, failed: int, prompt: int, cached: int, output: int, wall: float = 12.5) -> RunSummary:
    return RunSummary(
        input="in.jsonl",
        results="in.results.jsonl",
        errors="in.errors.jsonl",
        model="m",
        engine="null",
        profile="p",
        requests=RequestCounts(total=ok + failed, ok=ok, failed=failed, resumed=0),
        tokens=TokenCounts(prompt=prompt, cached=cached, completion=output),
        output_tokens_per_s=output / 10,
        prefix_cache_hit_share=cached / prompt if prompt else 0.0,
        planned_prefix_share=0.5,
        file_order_prefix_share=0.1,
        engine_metrics={},
        wall_seconds=wall,
        load_seconds=2.0,
        first_result_seconds=3.0,
        processing_seconds=10.0,
        vbatch_version="0",
        meta={},
    )


def parse(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the file, by name and labels, through prometheus_client's parser."""
    found = {}
    for family in text_string_to_metric_families(path.read_text()):
        assert family.type == "gauge", family
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def of_batch(samples: dict, batch: str) -> dict[str, float]:
    """One batch's samples, named `name` or `name{label=value}` for its label beside `batch`."""
    out = {}
    for (name, labels), value in samples.items():
        labels = dict(labels)
        if labels.pop("batch") == batch:
            out[name + "".join(f"{{{k}={v}}}" for k, v in labels.items())] = value
    return out


def expected(s: RunSummary) -> dict[str, float]:
    return {
        "vbatch_run_duration_seconds": s.wall_seconds,
        "vbatch_requests{outcome=ok}": s.requests.ok,
        "vbatch_requests{outcome=failed}": s.requests.failed,
        "vbatch_tokens{kind=prompt}": s.tokens.prompt,
        "vbatch_tokens{kind=output}": s.tokens.completion,
        "vbatch_cached_prompt_tokens": s.tokens.cached,
        "vbatch_output_tokens_per_second": s.output_tokens_per_s,
        "vbatch_prefix_cache_hit_ratio": s.prefix_cache_hit_share,
    }


class Warnings(list):
    def __call__(self, message: str, hint: str | None) -> None:
        self.append((message, hint))


def textfile(path: Path) -> tuple[MetricsTextfile, Warnings]:
    warnings = Warnings()
    metrics = MetricsTextfile.of(path, warn=warnings)
    assert metrics is not None
    return metrics, warnings


# --- The writer ------------------------------------------------------------------------------


def test_two_batches_in_one_file_read_back_as_their_summaries(tmp_path: Path):
    path = tmp_path / "vbatch.prom"
    metrics, warnings = textfile(path)
    a, b = summary(10, 2, 1000, 600, 400), summary(5, 0, 300, 0, 90, wall=3.25)
    before = time.time()
    metrics.record_success("a", a)
    metrics.record_success("b", b)
    samples = parse(path)
    for name, s in (("a", a), ("b", b)):
        got = of_batch(samples, name)
        assert before <= got.pop("vbatch_last_success_timestamp_seconds") <= time.time()
        assert got == expected(s)
    assert warnings == []
    # The names and help lines a reader sees, and no failure series before a failure.
    text = path.read_text()
    assert "# TYPE vbatch_last_success_timestamp_seconds gauge" in text
    assert 'vbatch_requests{batch="a",outcome="failed"} 2.0' in text
    assert "vbatch_last_failure_timestamp_seconds" not in text


def test_rewriting_one_batch_keeps_the_other_and_a_failure_keeps_the_last_success(tmp_path: Path):
    path = tmp_path / "vbatch.prom"
    metrics, _ = textfile(path)
    metrics.record_success("a", summary(1, 0, 10, 0, 5))
    metrics.record_success("b", summary(7, 1, 70, 35, 50))
    b_before = of_batch(parse(path), "b")

    again = summary(3, 1, 40, 20, 30, wall=1.0)
    metrics.record_success("a", again)
    samples = parse(path)
    assert of_batch(samples, "b") == b_before
    a_now = of_batch(samples, "a")
    success = a_now.pop("vbatch_last_success_timestamp_seconds")
    assert a_now == expected(again)

    metrics.record_failure("a")
    samples = parse(path)
    assert of_batch(samples, "b") == b_before
    a_failed = of_batch(samples, "a")
    assert a_failed.pop("vbatch_last_failure_timestamp_seconds") >= success
    assert a_failed == {**expected(again), "vbatch_last_success_timestamp_seconds": success}


def test_the_file_is_replaced_by_a_rename_and_no_temporary_file_stays(tmp_path: Path):
    path = tmp_path / "vbatch.prom"
    metrics, _ = textfile(path)
    metrics.record_success("a", summary(1, 0, 10, 0, 5))
    first = path.stat().st_ino
    metrics.record_success("b", summary(1, 0, 10, 0, 5))
    assert path.stat().st_ino != first  # a new file renamed over the old, not the old rewritten
    assert os.listdir(tmp_path) == ["vbatch.prom"]


def test_runs_finishing_at_once_lose_no_batch(tmp_path: Path):
    path = tmp_path / "vbatch.prom"
    metrics, warnings = textfile(path)
    threads = [
        threading.Thread(target=metrics.record_success, args=(f"b{i}", summary(i, 0, 10, 0, 5))) for i in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {i: of_batch(parse(path), f"b{i}")["vbatch_requests{outcome=ok}"] for i in range(8)} == {
        i: i for i in range(8)
    }
    assert warnings == [] and os.listdir(tmp_path) == ["vbatch.prom"]


def test_a_file_that_cannot_be_parsed_is_replaced_with_a_warning(tmp_path: Path):
    path = tmp_path / "vbatch.prom"
    path.write_text("this is { not the text format\n")
    metrics, warnings = textfile(path)
    metrics.record_success("a", summary(1, 0, 10, 0, 5))
    assert set(of_batch(parse(path), "a")) == {
        "vbatch_last_success_timestamp_seconds",
        *expected(summary(1, 0, 1, 0, 1)),
    }
    assert len(warnings) == 1 and "could not be parsed" in warnings[0][0] and "replacing it" in warnings[0][0]


def test_a_failed_write_is_a_warning_not_an_error(tmp_path: Path):
    gone = tmp_path / "gone"
    gone.mkdir()
    metrics, warnings = textfile(gone / "vbatch.prom")
    gone.rmdir()  # after the up-front check: a write failure, not a usage error
    metrics.record_success("a", summary(1, 0, 10, 0, 5))
    [(message, hint)] = warnings
    assert message.startswith(f"metrics not written to {gone / 'vbatch.prom'}") and "writable" in hint


@pytest.mark.parametrize(
    "name, message, hint",
    [
        ("missing/vbatch.prom", "the directory of metrics textfile", "mkdir -p"),
        ("vbatch.txt", "does not end in .prom", "reads only *.prom"),
        ("dir.prom", "is a directory", "name a file in it"),
    ],
)
def test_a_bad_path_is_a_usage_error_before_any_run(tmp_path: Path, name: str, message: str, hint: str):
    (tmp_path / "dir.prom").mkdir()
    with pytest.raises(UsageError, match=message) as caught:
        MetricsTextfile.of(tmp_path / name, warn=Warnings())
    assert hint in (caught.value.hint or "")
    assert MetricsTextfile.of(None, warn=Warnings()) is None


def test_a_runs_batch_label_is_its_inputs_stem_or_from_stdin_its_results():
    profile = load_profile("cpu")
    assert batch_label(RunSpec.with_outputs("/data/nightly.jsonl.gz", None, None, profile=profile)) == "nightly"
    assert batch_label(RunSpec.with_outputs("v1.2.parquet", Path("o.jsonl"), None, profile=profile)) == "v1.2"
    assert batch_label(RunSpec.with_outputs("-", Path("/x/out.results.jsonl"), None, profile=profile)) == "out"


# --- The real CLI, no model ------------------------------------------------------------------


def test_cli_over_env_over_profile(tmp_path: Path):
    """Blank inputs: the run finishes without loading a model, and writes its metrics."""
    files = {where: tmp_path / f"{where}.prom" for where in ("profile", "env", "cli")}
    profile = tmp_path / "p.toml"
    profile.write_text(f'model = "org/name"\n[batch]\nmetrics_textfile = "{files["profile"]}"\n')
    source = tmp_path / "blank.jsonl"
    source.write_text("\n")
    without = {key: value for key, value in user_env().items() if key != "VBATCH_METRICS_TEXTFILE"}
    with_env = {**without, "VBATCH_METRICS_TEXTFILE": str(files["env"])}
    runs = {
        "profile": ([], without),
        "env": ([], with_env),
        "cli": (["--metrics-textfile", str(files["cli"])], with_env),
    }
    for where, (args, env) in runs.items():
        proc = vbatch("run", str(source), "--profile", str(profile), "--restart", "-q", *args, env=env)
        assert proc.returncode == 0, proc.stderr
        assert sorted(tmp_path.glob("*.prom")) == [files[where]]
        blank = of_batch(parse(files[where]), "blank")
        assert blank.pop("vbatch_last_success_timestamp_seconds") > 0
        assert blank["vbatch_requests{outcome=ok}"] == 0 and blank["vbatch_tokens{kind=prompt}"] == 0
        files[where].unlink()


def test_cli_refuses_a_bad_path_before_touching_anything(tmp_path: Path):
    (tmp_path / "a.jsonl").write_text("\n")
    bad = tmp_path / "nope" / "vbatch.prom"
    for command in (["run", str(tmp_path / "a.jsonl")], ["drain", str(tmp_path)]):
        proc = vbatch(*command, "--profile", "cpu", "--metrics-textfile", str(bad))
        assert proc.returncode == 2, proc.stderr
        assert "the directory of metrics textfile" in proc.stderr and f"mkdir -p {bad.parent}" in proc.stderr
        assert os.listdir(tmp_path) == ["a.jsonl"]


def test_drain_writes_each_job_done_or_failed(tmp_path: Path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "blank.jsonl").write_text("\n")
    (inbox / "broken.parquet").write_text("this is not parquet")
    path = tmp_path / "vbatch.prom"
    proc = vbatch("drain", str(inbox), "--profile", "cpu", "--metrics-textfile", str(path), "--json")
    assert proc.returncode == 1, proc.stderr  # one job failed
    samples = parse(path)
    done, failed = of_batch(samples, "blank"), of_batch(samples, "broken")
    assert done["vbatch_requests{outcome=ok}"] == 0 and "vbatch_last_failure_timestamp_seconds" not in done
    assert set(failed) == {"vbatch_last_failure_timestamp_seconds"}
    assert sorted(os.listdir(tmp_path)) == ["inbox", "vbatch.prom"]
    # The same file again: its job directory is blank-2, its series are still blank's.
    (inbox / "blank.jsonl").write_text("\n\n")
    again = vbatch("drain", str(inbox), "--profile", "cpu", "--metrics-textfile", str(path), "--json")
    assert again.returncode == 0, again.stderr
    assert [job["dir"] for job in json.loads(again.stdout)["jobs"]] == [str(inbox / "done" / "blank-2")]
    samples = parse(path)
    assert {dict(labels)["batch"] for _, labels in samples} == {"blank", "broken"}
    assert (
        of_batch(samples, "blank")["vbatch_last_success_timestamp_seconds"]
        > done["vbatch_last_success_timestamp_seconds"]
    )


# --- One real run on the tiny model ----------------------------------------------------------


@pytest.mark.engine
def test_a_real_run_writes_its_summary(tmp_path: Path, tiny_profile: Path):
    source = tmp_path / "nightly.jsonl"
    write_lines(source, [chat_line(i, max_tokens=4) for i in range(6)] + ["{not json"])
    path = tmp_path / "vbatch.prom"
    proc = vbatch("run", str(source), "--profile", str(tiny_profile), "--json", "--metrics-textfile", str(path))
    assert proc.returncode == 1, proc.stderr  # the bad line
    s = RunSummary.model_validate(json.loads(proc.stdout))
    got = of_batch(parse(path), "nightly")
    assert got.pop("vbatch_last_success_timestamp_seconds") > 0
    assert got == expected(s)
    assert (s.requests.ok, s.requests.failed) == (6, 1) and s.tokens.prompt > 0
