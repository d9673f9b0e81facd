"""Admission policies under trial: measured beside vbatch's own before any moves into
vbatch/core/admission.py. bench_gpu_w1.py runs them as `vbatch@NAME` rows and sim_admission.py
as rows named by class; each is a subclass of the real policy, so the rest of the run is vbatch's.
"""

from __future__ import annotations

from vbatch.core.admission import Footprint, PacedKvAdmission


class BurstPacedKvAdmission(PacedKvAdmission):
    """Paced admission that admits only every `every` engine steps, what the pace allowed since.

    vLLM runs a step that prefills through piecewise CUDA graphs, launched layer by layer from
    Python (~5 ms of the engine core's CPU for a 32-layer model on the H200, py-spy), and a
    decode-only step as one full-graph replay. Paced admission adds a request every few steps,
    so about one step in four prefills; admitting in bursts prefills the same requests in one
    step in `every`, at the cost of freed cache waiting up to `every` steps for the next burst."""

    every = 16

    def __init__(self, budget_tokens: int, block_size: int):
        super().__init__(budget_tokens, block_size)
        self._pace_window = self.every  # a burst takes what the pace allows until the next one

    def fits(self, need: Footprint) -> bool:
        if self._admitted and self._steps % self.every:
            return False
        return super().fits(need)


class Burst8PacedKvAdmission(BurstPacedKvAdmission):
    every = 8


class Burst32PacedKvAdmission(BurstPacedKvAdmission):
    every = 32


class Over5PacedKvAdmission(PacedKvAdmission):
    """Paced admission against 5 % more KV tokens than the cache holds: vLLM preempts (and
    recomputes, mostly from the prefix cache) the few requests that do not fit at the peak, and
    the rest of the time more requests decode per step (the step model: W1 +3 %, MP +3 %)."""

    overcommit = 1.05

    def __init__(self, budget_tokens: int, block_size: int):
        super().__init__(int(budget_tokens * self.overcommit), block_size)


class Over10PacedKvAdmission(Over5PacedKvAdmission):
    overcommit = 1.10


class Over15PacedKvAdmission(Over5PacedKvAdmission):
    overcommit = 1.15
