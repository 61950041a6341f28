"""One grid runner for every table: (system x split) fine-tuning jobs, sharded over processes.

Paper 1's Tables 2 and 3 are 7 systems x 20 splits = 140 fine-tuning runs; paper 4 compares 6
systems x 20 splits. `experiment`, `ablate`, `two-stage-tables`, `mer-table` and `compare`
hand their systems' fine-tuning recipes to `run_grid`, which runs every (system, split) job
exactly once:

1. the main process plans every system's run (`finetune.run.plan_run`: labels, splits, feature
   stores extracted once into the cache, inputs.json; a folder holding results from other
   inputs is refused or, with --force, cleared) while the others wait;
2. every process takes the jobs j with j % num_processes == its index, in the order systems x
   splits, skips the finished ones (split_XX/metrics.json, written last) and runs the rest on
   its own device (`accelerate.PartialState().device`: cuda:i for the i-th process of a
   machine, the CPU without a GPU);
3. after a barrier, the main process reads every split back and writes each system's summary;
   the other processes read those summaries, so every process returns the same results.

Launch: one process runs the jobs in order, exactly as `finetune` does (each split is seeded by
seed + k, so the results equal a sequential run's); `accelerate launch --num_processes N -m
ssl_aver experiment ...` shards them over N processes, on one machine or several (each job
writes only its own split folder; the run folders must be on storage every machine sees). An
interrupted grid (a crash, a kill -9, a preempted node) is resumed by running the same command
again: finished jobs are reused, since their recorded inputs match. Jobs run whole in one
process (a job's gradients are never all-reduced with another process's): for many small jobs
this is the parallelism that scales, and it keeps each job's result independent of N.
"""

from __future__ import annotations

import time
from typing import Any, Mapping

from omegaconf import DictConfig


def process_state() -> Any:
    """accelerate's PartialState (rank, world size, device, barriers) of this process; on a
    machine without a GPU (or with ACCELERATE_USE_CPU=1) the processes join over gloo on the CPU."""
    import os

    import torch
    from accelerate import PartialState

    cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") or not torch.cuda.is_available()
    return PartialState(cpu=cpu)


def is_main_process() -> bool:
    """True in the process that writes tables (the only one without `accelerate launch`)."""
    return bool(process_state().is_main_process)


def run_grid(configs: Mapping[str, DictConfig], force: bool = False, progress: bool = True) -> dict[str, dict[str, Any]]:
    """Fine-tune every system of `configs` (name -> finetune recipe) on every split, jobs sharded
    over the launched processes; returns {name: summary} (each run's metrics.json) in every process."""
    from ssl_aver.io import read_json
    from ssl_aver.progress import tqdm

    from finetune.run import plan_run, run_split, split_done, summarize

    state = process_state()
    device = str(state.device) if state.num_processes > 1 else None
    plans = {}
    if state.is_main_process:
        plans = {name: plan_run(cfg, force=force, device=device) for name, cfg in configs.items()}
    state.wait_for_everyone()
    if not state.is_main_process:
        plans = {name: plan_run(cfg, write=False, device=device) for name, cfg in configs.items()}
    jobs = [(name, k) for name, plan in plans.items() for k in range(len(plan.splits))]
    mine = [job for j, job in enumerate(jobs) if j % state.num_processes == state.process_index]
    todo = [(name, k) for name, k in mine if not split_done(plans[name], k)]
    start = time.perf_counter()
    bar = tqdm(todo, desc=f"grid [{state.process_index + 1}/{state.num_processes}]", unit="job", disable=not progress)
    for name, k in bar:
        run_split(plans[name], k)
    seconds = time.perf_counter() - start
    state.wait_for_everyone()
    if state.is_main_process:
        for name, plan in plans.items():
            plan.resume = True  # every split was finished above, in some process
            summarize(plan, [run_split(plan, k) for k in range(len(plan.splits))])
    state.wait_for_everyone()
    summaries = {name: read_json(plan.out / "metrics.json") for name, plan in plans.items()}
    for summary in summaries.values():
        summary["grid"] = {"processes": state.num_processes, "jobs": len(jobs), "ran_here": len(todo), "seconds_here": round(seconds, 2)}
    return summaries
