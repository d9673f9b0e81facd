"""Stopping a run: SIGTERM and SIGINT end it cleanly, and its engine processes never outlive it.

vLLM runs its engine in processes of its own (EngineCore, and workers on GPUs) that hold the
model's memory: on a 16 GB GPU, one left running keeps the memory the resume needs. Three
guards, used alike by `vbatch run` and `vbatch drain`:

1. SIGTERM and SIGINT raise StopRequested in the main thread, so the run unwinds as on an
   error (results flushed, engine shut down, locks released); the command then reports
   StoppedError (exit 143 or 130).
2. A reaper process, started first, watches vbatch's process tree; when vbatch dies without
   unwinding (kill -9, the OOM killer), it stops every process vbatch had started.
3. Every lock file vbatch holds records the engine's processes; the next run on the same
   output or inbox stops the ones a dead run left (its reaper killed with it).

A process is named by its pid and start time, so a reused pid is never signalled. Linux /proc
only, stdlib only: the reaper starts in milliseconds and the core imports without vLLM.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TextIO

from vbatch.errors import ExitCode, StoppedError

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: Seconds between a SIGTERM and the SIGKILL of an engine process that has not exited.
STOP_GRACE = 3.0
#: How often the reaper looks at vbatch's process tree (and whether vbatch is still alive).
WATCH_INTERVAL = 1.0
_DONE = b"done\n"


# --- Processes -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Proc:
    pid: int
    #: Clock ticks from boot to the process's start (/proc/PID/stat field 22).
    start: int

    @classmethod
    def of(cls, pid: int) -> Proc | None:
        stat = _stat(pid)
        return None if stat is None else cls(pid, stat[2])

    def alive(self) -> bool:
        """Running (not a zombie) and still the process that had this pid."""
        stat = _stat(self.pid)
        return stat is not None and stat[0] != "Z" and stat[2] == self.start


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start time) from /proc/PID/stat; None for no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            fields = file.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0].decode(), int(fields[1]), int(fields[19])


def boot_id() -> str:
    """Start times count from boot: a pid and start time name one process within one boot."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as file:
            return file.read().strip()
    except OSError:
        return ""


def descendants(pid: int) -> list[Proc]:
    """Every process below `pid`, parents first."""
    found: list[Proc] = []
    parents = [pid]
    while parents:
        children = [child for parent in parents for child in _children(parent)]
        found.extend(proc for proc in map(Proc.of, children) if proc is not None)
        parents = children
    return found


def _children(pid: int) -> list[int]:
    if not _CHILDREN_FILES:  # a kernel without CONFIG_PROC_CHILDREN: read every process's parent
        stats = {int(name): _stat(int(name)) for name in os.listdir("/proc") if name.isdigit()}
        return [child for child, stat in stats.items() if stat is not None and stat[1] == pid]
    children: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children", "rb") as file:
                children.extend(int(child) for child in file.read().split())
        except OSError:
            continue  # the thread ended
    return children


_CHILDREN_FILES = os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children")


def _is_engine(proc: Proc) -> bool:
    """Not multiprocessing's resource tracker: a helper of vbatch itself, which exits with it
    (and removes the engine's shared memory then); it ignores SIGTERM."""
    try:
        with open(f"/proc/{proc.pid}/cmdline", "rb") as file:
            return b"multiprocessing.resource_tracker" not in file.read()
    except OSError:
        return False


def stop(procs: list[Proc], grace: float = STOP_GRACE) -> list[Proc]:
    """SIGTERM the living ones among `procs` and the engine processes below them (a GPU
    engine's workers), SIGKILL what is left after `grace` seconds; returns those signalled."""
    living = [proc for proc in procs if proc.alive()]
    targets = list(dict.fromkeys(living + [p for proc in living for p in descendants(proc.pid) if _is_engine(p)]))
    for proc in targets:
        _signal(proc, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(proc.alive() for proc in targets) and time.monotonic() < deadline:
        time.sleep(0.05)
    for proc in targets:
        _signal(proc, signal.SIGKILL)
    return targets


def _signal(proc: Proc, signum: int) -> None:
    if not proc.alive():
        return
    try:
        os.kill(proc.pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


# --- The engine's processes ------------------------------------------------------------------

_engine: list[Proc] = []
#: Called whenever the engine's processes change: each held lock file rewrites its record.
_listeners: list[Callable[[], None]] = []


@contextmanager
def engine_starting() -> Iterator[None]:
    """Wrap the engine's load: the processes that appear below this one meanwhile are the
    engine's (also when the load fails or a stop interrupts it, so they can be stopped)."""
    before = set(descendants(os.getpid()))
    try:
        yield
    finally:
        new = [proc for proc in descendants(os.getpid()) if proc not in before and _is_engine(proc)]
        _engine[:] = [proc for proc in _engine if proc.alive()] + new
        for listener in _listeners:
            listener()


def engine_processes() -> list[Proc]:
    return list(_engine)


def listen(listener: Callable[[], None]) -> None:
    _listeners.append(listener)


def unlisten(listener: Callable[[], None]) -> None:
    if listener in _listeners:
        _listeners.remove(listener)


#: Where this module's notices to the user go; None: sys.stderr. The CLI points it at the terminal
#: while the process's stderr goes to the engine's log file.
notice_stream: TextIO | None = None


def stop_leftovers(holder: dict[str, Any] | None, of: str) -> None:
    """Stop the engine processes that a dead run recorded in its lock file (`holder`) and
    that are still running: its reaper died with it, or never saw them."""
    if not holder or holder.get("host") != socket.gethostname() or holder.get("boot") != boot_id():
        return
    try:
        if Proc(int(holder["pid"]), int(holder["start"])).alive():
            return  # not dead: never touch a live run's engine
        recorded = [Proc(int(pid), int(start)) for pid, start in holder.get("engine", [])]
    except (KeyError, TypeError, ValueError):
        return
    stopped = stop(recorded)
    if stopped:
        pids = ", ".join(str(proc.pid) for proc in stopped)
        print(
            f"stopped engine processes left running by an earlier vbatch (pid {holder['pid']}) of {of}: pids {pids}",
            file=notice_stream or sys.stderr,
            flush=True,
        )


# --- Signals and the reaper ------------------------------------------------------------------


class StopRequested(BaseException):
    """Raised in the main thread by SIGINT or SIGTERM. A BaseException, like KeyboardInterrupt,
    so no `except Exception` on the way out (vbatch's or vLLM's) takes it for an engine failure."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


_received: int | None = None


def _on_signal(signum: int, frame: Any) -> None:
    global _received
    if _received is None:
        _received = signum
        raise StopRequested(signum)
    # A second signal (another Ctrl-C) must not cut the first one's clean-up short.


def raise_if_stopping() -> None:
    """An engine failure after a stop signal is the stop: the engine shares vbatch's process
    group, so Ctrl-C reaches it too and it may die before vbatch's own handler has run."""
    if _received is not None:
        raise StopRequested(_received)


def _stopped_error(signum: int) -> StoppedError:
    if signum == signal.SIGTERM:
        return StoppedError("terminated (SIGTERM): run the same command again to resume", ExitCode.TERMINATED)
    return StoppedError("interrupted (SIGINT): run the same command again to resume", ExitCode.INTERRUPTED)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Run a command's work so that SIGINT and SIGTERM unwind it and end it as StoppedError,
    and so that its engine processes die with it whatever kills it. Any error raised after a
    stop signal is reported as the stop (see raise_if_stopping).
    """
    global _received
    _received = None
    reaper = subprocess.Popen(
        [sys.executable, "-m", "vbatch.processes", str(os.getpid())],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    saved = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    try:
        for sig in STOP_SIGNALS:
            signal.signal(sig, _on_signal)
        yield
    except StopRequested as stop_request:
        raise _stopped_error(stop_request.signum) from None
    except Exception:
        if _received is None:
            raise
        raise _stopped_error(_received) from None
    finally:
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)  # the few seconds left must not be cut short
        stop(_engine)  # what the engine's own shutdown left, if a stop cut it short
        _engine.clear()
        _dismiss(reaper)
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def _dismiss(reaper: subprocess.Popen) -> None:
    """vbatch unwound: the reaper leaves without stopping anything."""
    try:
        reaper.communicate(_DONE, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        pass  # it died (systemd stops the whole cgroup) or hangs: nothing of ours depends on it


def _reap(parent: int) -> None:
    """The reaper process: record the processes below `parent` (vbatch) while it lives; when it
    dies without having said it is done, stop them."""
    me = os.getpid()
    below: set[Proc] = set()
    while True:
        # Looked at before each wait: once vbatch is dead, its children are no longer below it.
        below = {proc for proc in below if proc.alive()} | {p for p in descendants(parent) if p.pid != me}
        ready, _, _ = select.select([0], [], [], WATCH_INTERVAL)
        if ready:
            message = os.read(0, len(_DONE))
            if message == _DONE:
                return
            if not message:
                break  # vbatch is gone: its end of the pipe closed
        if os.getppid() != parent:
            break  # gone, while a forked child still holds the pipe
    stopped = stop([proc for proc in below if _is_engine(proc)])
    if stopped:
        pids = ", ".join(str(proc.pid) for proc in stopped)
        print(f"vbatch (pid {parent}) died; stopped its engine processes: pids {pids}", file=sys.stderr)


if __name__ == "__main__":
    _reap(int(sys.argv[1]))
