"""The grid runner: (system x split) jobs sharded over `accelerate launch` processes, each run
once, the table equal to a single process's, and a killed grid resumed without redoing jobs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from ssl_aver.app.cli import main

from tests.finetune.test_compare import VAVL
from tests.finetune.test_vavl import make_stores

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
LAUNCH = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
          "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "ssl_aver"]


def _recipe(root: Path, crema: Path, out: Path, epochs: int = 3) -> Path:
    audio, video = (root / "stores" / "audio", root / "stores" / "video")
    if not audio.is_dir():
        make_stores(crema, root / "stores")
    base = root / "base.yaml"
    base.write_text(yaml.safe_dump({
        "data": {"condition": "av", "target": "multiclass"}, "progress": False,
        "features": {"audio": {"store": str(audio)}, "video": {"store": str(video)}},
        "train": {"epochs": epochs, "lr": 2e-3, "batch_size": 16, "lr_patience": None, "early_stop_patience": None, "num_threads": 1},
        "eval": {"bootstrap": 0},
    }))
    recipe = root / f"{out.name}.yaml"
    recipe.write_text("# ssl-aver compare --config (test)\n" + yaml.safe_dump({
        "output_dir": str(out), "finetune": {"config": str(base), "overrides": []}, "data": {"root": str(crema)},
        "splits": {"k": 3, "seed": 0}, "bootstrap": 0, "reference": "A",
        "systems": [{"name": "A", "head": "vavl", "overrides": VAVL}, {"name": "B", "head": "vavl", "overrides": [*VAVL, "model.fusion=average"]},
                    {"name": "C", "head": "mult", "overrides": ["model.cross_layers=1", "model.memory_layers=1"]}],
    }))
    return recipe


def _attempts(out: Path) -> dict[str, list[str]]:
    return {str(p.parent.relative_to(out)): p.read_text().splitlines() for p in sorted(out.glob("systems/*/split_*/attempts.log"))}


def _scores(out: Path) -> dict[str, list[float]]:
    report = json.loads((out / "compare.json").read_text())
    return {f"{c}/{name}": s["values"]["macro_f1"] for c, e in report["conditions"].items() for name, s in e["systems"].items()}


def test_two_processes_run_every_job_once_with_the_single_process_table(tiny_crema, tmp_path):
    single = tmp_path / "single"
    assert main(["compare", "--config", str(_recipe(tmp_path, tiny_crema, single))]) == 0
    sharded = tmp_path / "sharded"
    result = subprocess.run([*LAUNCH, "compare", "--config", str(_recipe(tmp_path, tiny_crema, sharded))], env=ENV,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    attempts = _attempts(sharded)
    assert len(attempts) == 9 and all(len(lines) == 1 for lines in attempts.values())  # 3 systems x 3 splits, each once
    assert {line.split("process=")[1].split()[0] for lines in attempts.values() for line in lines} == {"0/2", "1/2"}
    assert _scores(sharded) == _scores(single)  # same seeds per split: the same numbers as one process
    assert result.stdout.count("## Audio-visual") == 1  # one table, printed by the main process only


def test_a_killed_grid_resumes_without_redoing_finished_jobs(tiny_crema, tmp_path):
    out = tmp_path / "killed"
    recipe = _recipe(tmp_path, tiny_crema, out, epochs=6)
    proc = subprocess.Popen([*LAUNCH, "compare", "--config", str(recipe)], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not list(out.glob("systems/*/split_*/metrics.json")):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # kill -9 of the launcher and both workers, mid-grid
    proc.wait()
    finished = {str(p.parent.relative_to(out)) for p in out.glob("systems/*/split_*/metrics.json")}
    assert 0 < len(finished) < 9
    assert main(["compare", "--config", str(recipe)]) == 0
    attempts = _attempts(out)
    assert len(attempts) == 9 and all(len(attempts[split]) == 1 for split in finished)  # finished jobs were not redone
    assert len(json.loads((out / "compare.json").read_text())["systems"]) == 3
