"""Everything a command shows goes through one `Output`, built from the command's options.

Modes: *human* (a report on stderr for a person), *json* (one JSON document on stdout, for a
program) and *quiet* (nothing but errors). Status lines and progress go to stderr and are left
out by --quiet, which may come with --json (`Output.of(json=True, quiet=True)`: the document,
nothing else). stdout holds only what a command produces (the JSON document, a table, a unit
file, a command line), so `vbatch ... --json > file` and pipes stay clean.

Where a rich display is drawn: the progress bar on a terminal (plain periodic lines otherwise:
cron mail, the systemd journal), tables when stdout is a terminal (commands decide with
`stdout_is_terminal`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TextIO

import orjson

from vbatch import processes
from vbatch.cli.progress import PlainReporter, RichReporter
from vbatch.errors import VbatchError
from vbatch.services.reporting import Reporter

if TYPE_CHECKING:
    from rich.console import Console

Mode = Literal["human", "json", "quiet"]


class Output:
    """One command's output: a mode, and the streams (the process's stdout and stderr unless
    given, looked up when used)."""

    def __init__(
        self,
        mode: Mode = "human",
        *,
        quiet: bool = False,
        stdout: TextIO | None = None,
        stderr: TextIO | None = None,
        progress_interval: float = 10.0,
    ) -> None:
        self.mode: Mode = mode
        #: No status lines, no progress (only errors and what a command must say).
        self.quiet = quiet or mode == "quiet"
        #: Seconds between the plain progress lines written when stderr is not a terminal.
        self.progress_interval = progress_interval
        self._stdout = stdout
        self._stderr = stderr
        self._console: Console | None = None

    @classmethod
    def of(cls, *, json: bool = False, quiet: bool = False, **settings: Any) -> Output:
        """The Output of a command's --json and --quiet options."""
        return cls("json" if json else "quiet" if quiet else "human", quiet=quiet, **settings)

    @property
    def stdout(self) -> TextIO:
        return self._stdout or sys.stdout

    @property
    def stderr(self) -> TextIO:
        return self._stderr or sys.stderr

    @property
    def stdout_is_terminal(self) -> bool:
        """Whether what goes to stdout is read by a person: a rich table then, plain columns otherwise."""
        return self.stdout.isatty()

    @property
    def rich_progress(self) -> bool:
        """A live progress bar (stderr is a terminal), rather than plain periodic lines."""
        return not self.quiet and self.stderr.isatty()

    # --- stderr ---------------------------------------------------------------------------------

    @property
    def console(self) -> Console:
        """The rich console on stderr for status lines, reports and errors. It never breaks a line
        (a message stays whole in a log) and colours only what its markup says."""
        if self._console is None:
            from rich.console import Console

            self._console = Console(file=self._stderr, stderr=True, soft_wrap=True, highlight=False)
        return self._console

    def status(self, text: str) -> None:
        """A status line in rich markup (escape what comes from outside), left out by --quiet."""
        if not self.quiet:
            self.console.print(text)

    def say(self, text: str) -> None:
        """A plain status line, written at once, left out by --quiet."""
        if not self.quiet:
            self.notice(text)

    def notice(self, text: str) -> None:
        """A plain line on stderr even with --quiet: how the command ended (stopped, interrupted)."""
        print(text, file=self.stderr, flush=True)

    def error(self, message: str, hint: str | None = None) -> None:
        """`error: MESSAGE` and `hint: HINT` on stderr, in every mode."""
        from rich.markup import escape

        self.console.print(f"[bold red]error:[/] {escape(message)}")
        if hint:
            self.console.print(f"[yellow]hint:[/] {escape(hint)}")

    def warning(self, message: str, hint: str | None = None) -> None:
        """`warning: MESSAGE` and `hint: HINT` on stderr, in every mode: something went wrong that
        does not stop the command (a metrics file it could not write)."""
        from rich.markup import escape

        self.console.print(f"[bold yellow]warning:[/] {escape(message)}")
        if hint:
            self.console.print(f"[yellow]hint:[/] {escape(hint)}")

    def reporter(self) -> Reporter:
        """The progress display of a run: a rich bar on a terminal, plain lines otherwise, none with --quiet."""
        if self.quiet:
            return Reporter()
        if self.rich_progress:
            return RichReporter(self.page(stderr=True))
        return PlainReporter(self.stderr, self.progress_interval)

    # --- stdout ---------------------------------------------------------------------------------

    def json(self, document: Any) -> None:
        """One JSON document on stdout (JSON values: dicts, lists, str, numbers, None), indented by 2."""
        data = orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n"
        stream = self.stdout
        buffer = getattr(stream, "buffer", None)
        if buffer is None:
            stream.write(data.decode())
            stream.flush()
            return
        stream.flush()
        buffer.write(data)
        buffer.flush()

    def text(self, text: str, end: str = "\n") -> None:
        """Plain text on stdout, as it is: a unit file, a command line, a TOML profile, a column."""
        print(text, end=end, file=self.stdout, flush=True)

    def page(self, *, stderr: bool = False, width_off_terminal: int | None = None, **settings: Any) -> Console:
        """A rich console for a table or a view (stdout unless `stderr`), with rich's own defaults
        unless `settings` say otherwise; off a terminal `width_off_terminal` columns, if given,
        instead of rich's 80."""
        from rich.console import Console

        stream = self._stderr if stderr else self._stdout
        console = Console(file=stream, stderr=stderr, **settings)
        if width_off_terminal and not console.is_terminal:
            console = Console(file=stream, stderr=stderr, width=width_off_terminal, **settings)
        return console

    def engine_output(self, log: Path | None) -> AbstractContextManager[None]:
        """Where vLLM's output (its logging, warnings, progress bars, and those of torch and the
        other libraries, from this process and the engine processes it starts) goes while the
        engine loads and works: into `log`, while this Output keeps the terminal for vbatch's own
        progress and messages; with no log (-v), to the terminal, on stderr in json mode so stdout
        holds the JSON document alone."""
        if log is not None:
            return self._to_log_file(log)
        return stdout_to_stderr() if self.mode == "json" else nullcontext()

    @contextmanager
    def _to_log_file(self, log: Path) -> Iterator[None]:
        """File descriptors 1 and 2 point at `log` (engine processes inherit them); this Output
        writes to copies of the terminal's. An error raised inside names the log in its hint."""
        sys.stdout.flush()
        sys.stderr.flush()
        log.parent.mkdir(parents=True, exist_ok=True)
        terminal = os.dup(1), os.dup(2)
        previous = self._stdout, self._stderr, self._console
        self._stdout = os.fdopen(os.dup(terminal[0]), "w", buffering=1)
        self._stderr = os.fdopen(os.dup(terminal[1]), "w", buffering=1)
        self._console = None
        previous_notices, processes.notice_stream = processes.notice_stream, self._stderr
        log_fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.close(log_fd)
        failed = False
        try:
            yield
        except VbatchError as err:
            if log.stat().st_size:
                err.hint = f"{err.hint}; vLLM's log: {log}" if err.hint else f"vLLM's log: {log}"
            raise
        except Exception:
            failed = True
            raise
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, saved in zip((1, 2), terminal, strict=True):
                os.dup2(saved, fd)
                os.close(saved)
            for stream in (self._stdout, self._stderr):
                stream.close()
            self._stdout, self._stderr, self._console = previous
            processes.notice_stream = previous_notices
            if not log.stat().st_size:
                log.unlink()  # nothing was loaded (no requests, or a server did the work)
            elif failed:
                self.notice(f"vLLM's log: {log}")


@contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Point file descriptor 1 at stderr (for this process and the engine processes it starts),
    so vLLM's logging cannot mix with a JSON summary or table written to stdout afterwards."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
