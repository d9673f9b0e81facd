"""Processes as the tests see them, read straight from Linux /proc (independently of the code
under test, vbatch.processes): the tree below a pid, start times, states, command lines."""

from __future__ import annotations

from pathlib import Path


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat fields after the command name (state first); None for no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def start_time(pid: int) -> int | None:
    fields = _stat(pid)
    return None if fields is None else int(fields[19])


def is_running(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def alive(pid: int, start: int) -> bool:
    """Running, and still the process that started at `start` (not a reused pid)."""
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z" and int(fields[19]) == start


def tree(pid: int) -> dict[int, int]:
    """Every process below `pid`, by pid, with its start time."""
    found: dict[int, int] = {}
    parents = [pid]
    while parents:
        children = []
        for parent in parents:
            for task in Path(f"/proc/{parent}/task").glob("*"):
                try:
                    children += [int(c) for c in (task / "children").read_text().split()]
                except OSError:
                    continue
        found.update({child: start for child in children if (start := start_time(child)) is not None})
        parents = children
    return found


def descendants(pid: int) -> set[int]:
    """Every process below `pid`."""
    return set(tree(pid))


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
