"""One grid runner for every table: (system x split) fine-tuning jobs, sharded over processes.

Paper 1's Tables 2 and 3 are 7 systems x 20 splits = 140 fine-tuning runs; paper 4 compares 6
systems x 20 splits. `experiment`, `ablate`, `two-stage-tables`, `mer-table` and `compare`
hand their systems' fine-tuning recipes to `run_grid`, which runs every (system, split) job
exactly once:

1. the main process plans every system's run (`finetune.run.plan_run`: labels, splits, feature
   stores extracted once into the cache, inputs.json; a folder holding results from other
   inputs is refused or, with --force, cleared) while the others wait;
2. every process walks the jobs in the order systems x splits, skips the finished ones
   (split_XX/metrics.json, written last) and claims the next free one by creating
   split_XX/.claim-<grid session> exclusively (an atomic file creation, so two processes never
   take the same job, also across machines sharing the folder): a process that finishes a short
   job takes the next one, so systems of very different cost still keep every process busy. It
   runs the job on its own device (`accelerate.PartialState().device`: cuda:i for the i-th
   process of a machine, the CPU without a GPU); the claims are removed when the grid is done;
3. after a barrier, the main process reads every split back and writes each system's summary;
   the other processes read those summaries, so every process returns the same results.

Launch: one process runs the jobs in order, exactly as `finetune` does (each split is seeded by
seed + k, so the results equal a sequential run's); `accelerate launch --num_processes N -m
ssl_aver experiment ...` shards them over N processes, on one machine or several (each job
writes only its own split folder; the run folders must be on storage every machine sees). An
interrupted grid (a crash, a kill -9, a preempted node) is resumed by running the same command
again: finished jobs are reused, since their recorded inputs match, and the claims of the dead
session (a new session id) do not hold their jobs back. Jobs run whole in one
process (a job's gradients are never all-reduced with another process's): for many small jobs
this is the parallelism that scales, and it keeps each job's result independent of N.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any, Mapping

from omegaconf import DictConfig


def process_state() -> Any:
    """accelerate's PartialState (rank, world size, device, barriers) of this process; on a
    machine without a GPU (or with ACCELERATE_USE_CPU=1) the processes join over gloo on the CPU."""
    import torch
    from accelerate import PartialState

    cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") or not torch.cuda.is_available()
    return PartialState(cpu=cpu)


def is_main_process() -> bool:
    """True in the process that writes tables (the only one without `accelerate launch`)."""
    return bool(process_state().is_main_process)


def claim(split_dir: Path, session: str) -> bool:
    """Take a job for this grid session: True when this process created its claim file first."""
    split_dir.mkdir(parents=True, exist_ok=True)
    try:
        handle = os.open(split_dir / f".claim-{session}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.write(handle, f"pid={os.getpid()}\n".encode())
    os.close(handle)
    return True


def release(split_dir: Path) -> None:
    """Remove the claims of a finished job (this session's and any left by a killed one); the
    main process does it once every job of the grid is done, so no job is claimed twice."""
    for path in split_dir.glob(".claim-*"):
        path.unlink(missing_ok=True)


def run_grid(configs: Mapping[str, DictConfig], force: bool = False, progress: bool = True) -> dict[str, dict[str, Any]]:
    """Fine-tune every system of `configs` (name -> finetune recipe) on every split, jobs sharded
    over the launched processes; returns {name: summary} (each run's metrics.json) in every process."""
    from accelerate.utils import broadcast_object_list

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
    session = broadcast_object_list([uuid.uuid4().hex if state.is_main_process else None])[0]
    jobs = [(name, k) for name, plan in plans.items() for k in range(len(plan.splits))]
    todo = [(name, k) for name, k in jobs if not split_done(plans[name], k)]
    start = time.perf_counter()
    ran = 0
    bar = tqdm(todo, desc=f"grid [{state.process_index + 1}/{state.num_processes}]", unit="job", disable=not progress)
    for name, k in bar:
        split_dir = plans[name].out / f"split_{k:02d}"
        if split_done(plans[name], k) or not claim(split_dir, session):
            continue
        run_split(plans[name], k)
        ran += 1
    seconds = time.perf_counter() - start
    state.wait_for_everyone()
    if state.is_main_process:
        for name, plan in plans.items():
            plan.resume = True  # every split was finished above, in some process
            summarize(plan, [run_split(plan, k) for k in range(len(plan.splits))])
            for k in range(len(plan.splits)):
                release(plan.out / f"split_{k:02d}")
    state.wait_for_everyone()
    summaries = {name: read_json(plan.out / "metrics.json") for name, plan in plans.items()}
    for summary in summaries.values():
        summary["grid"] = {"processes": state.num_processes, "jobs": len(jobs), "ran_here": ran, "seconds_here": round(seconds, 2)}
    return summaries
