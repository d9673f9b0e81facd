"""Where a run writes: the results file, and the files that go with it, named from its stem."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vbatch.errors import UsageError


@dataclass
class OutputPaths:
    """Where a run writes. Parquet outputs are spooled as JSONL and converted at the end."""

    results: Path
    errors: Path
    summary: Path
    run_record: Path
    lock: Path
    #: Where stdin is copied while a run reads it (see readers.copy_stdin); gone once it ends.
    stdin_copy: Path

    @classmethod
    def for_run(cls, output: Path, errors: Path) -> OutputPaths:
        stem = output_stem(output)
        return cls(
            results=output,
            errors=errors,
            summary=stem.with_name(stem.name + ".summary.json"),
            run_record=stem.with_name(stem.name + ".run.json"),
            lock=stem.with_name(stem.name + ".lock"),
            stdin_copy=stem.with_name(stem.name + ".stdin.jsonl"),
        )

    @staticmethod
    def spool(path: Path) -> Path:
        return path if path.suffix != ".parquet" else path.with_name(path.name + ".partial.jsonl")

    def written(self) -> list[Path]:
        return [self.results, self.errors, self.spool(self.results), self.spool(self.errors), self.summary]


def output_stem(path: Path) -> Path:
    """batch.results.jsonl -> batch: the base name of the files that go with an output."""
    name = path.name
    for suffix in (".gz", ".jsonl", ".parquet", ".json", ".results"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return path.with_name(name or path.name)


def default_output(input_path: str) -> Path:
    if input_path == "-":
        raise UsageError("reading from stdin needs -o OUT to say where results go")
    path = Path(input_path)
    return output_stem(path).with_name(output_stem(path).name + ".results.jsonl")


def default_errors(output: Path) -> Path:
    stem = output_stem(output)
    return stem.with_name(stem.name + ".errors.jsonl")
