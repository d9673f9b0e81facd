"""Admission policies of earlier sessions, rebuilt from today's classes, so a benchmark (on the
GPU, scripts/bench_gpu_w1.py) or the step model (scripts/sim_admission.py) measures a change
side by side with what it replaced, in one run.

`paced-2026-12-01`: paced admission as measured on 2026-12-01 (docs/benchmarks.md, 1d): a whole
block of rounding per sequence, no pace credit, requests admitted in plan order (lookahead 1).
"""

from __future__ import annotations

from vbatch.core.admission import PacedKvAdmission


class PacedAsOf20261201(PacedKvAdmission):
    pace_credit = 1

    def _rounding(self, sequences: int) -> int:
        return sequences * self.block_size


#: name -> (admission class, lookahead)
VARIANTS = {"paced-2026-12-01": (PacedAsOf20261201, 1)}
