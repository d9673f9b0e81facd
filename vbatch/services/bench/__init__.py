"""`vbatch bench`: the same workload against vbatch and other servers, measured the same way.

targets: parse `--target` specs; workloads: seeded built-in prompts or a batch file;
metrics: pure latency/throughput arithmetic; http_targets / engine_target: how each kind of
target is driven; runner: the one core function, `run_bench`; report: the JSON report, its
table and comparisons; plot: the PNG.
"""
