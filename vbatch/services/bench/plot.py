"""The PNG of a report: throughput, time to first token and end-to-end latency vs concurrency.

One colour per target, one line style per percentile (p50 solid, p95 dashed, p99 dotted).
matplotlib is imported only here, with the Agg backend: no display needed.
"""

from __future__ import annotations

from pathlib import Path

from vbatch.errors import UsageError
from vbatch.services.bench.report import (
    BenchReport,
    describe_environment,
    describe_workload,
)

_PERCENTILES = (("p50", "-"), ("p95", "--"), ("p99", ":"))


def write_plot(report: BenchReport, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.lines import Line2D
    except ImportError as err:
        raise UsageError(f"--plot needs matplotlib: {err}", hint="pip install matplotlib") from None

    targets = list(dict.fromkeys(row.target for row in report.rows))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colour_of = {target: colours[i % len(colours)] for i, target in enumerate(targets)}
    failed = {t for t in targets if not any(r.ok for r in report.rows if r.target == t)}
    name_of = {t: f"{t} (every request failed)" if t in failed else t for t in targets}
    fig, (throughput, ttft, e2e) = plt.subplots(1, 3, figsize=(17, 5.5), constrained_layout=True)
    for target in targets:
        rows = [row for row in report.rows if row.target == target and row.ok]
        colour = colour_of[target]
        throughput.plot(
            [r.concurrency for r in rows],
            [r.output_tokens_per_s for r in rows],
            marker="o",
            color=colour,
            label=name_of[target],
        )
        for axis, field, scale in ((ttft, "ttft_s", 1e3), (e2e, "e2e_s", 1.0)):
            for percentile, style in _PERCENTILES:
                points = [
                    (r.concurrency, getattr(getattr(r, field), percentile) * scale)
                    for r in rows
                    if getattr(r, field) is not None
                ]
                if points:
                    xs, ys = zip(*points)
                    axis.plot(xs, ys, linestyle=style, marker="o", markersize=4, color=colour)
    missing_ttft = [t for t in targets if t not in failed and not any(r.ttft_s for r in report.rows if r.target == t)]
    if missing_ttft:
        ttft.text(
            0.02,
            0.98,
            "not measured: " + ", ".join(missing_ttft),
            transform=ttft.transAxes,
            va="top",
            fontsize=9,
            color="dimgray",
        )
    throughput.set(title="Output throughput", ylabel="output tokens / s")
    ttft.set(title="Time to first token", ylabel="milliseconds")
    e2e.set(title="End-to-end latency per request", ylabel="seconds")
    for axis in (throughput, ttft, e2e):
        axis.set_xscale("log", base=2)
        axis.set_xticks(report.concurrency, labels=[str(c) for c in report.concurrency])
        axis.minorticks_off()
        axis.set_xlabel("concurrency (requests in flight)")
        axis.set_ylim(bottom=0)
        axis.grid(True, alpha=0.3)
    throughput.legend(fontsize=9)
    handles = [Line2D([], [], color=colour_of[t], label=name_of[t]) for t in targets]
    handles += [Line2D([], [], color="black", linestyle=style, label=p) for p, style in _PERCENTILES]
    for axis in (ttft, e2e):
        axis.legend(handles=handles, fontsize=8)
    fig.suptitle(f"vbatch bench: {describe_workload(report)}\n{describe_environment(report.environment)}", fontsize=10)
    try:
        fig.savefig(path, dpi=110)
    except OSError as err:
        raise UsageError(
            f"cannot write the plot to {path}: {err.strerror or err}", hint="choose a writable path for --plot"
        ) from None
    finally:
        plt.close(fig)
