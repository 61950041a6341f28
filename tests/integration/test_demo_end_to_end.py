"""`ssl-aver demo` end to end (about 5 minutes on 2 cores): every stage runs on the generated
data and reports what its issue promises. The same command `make demo` runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ssl_aver.app.demo import STAGES

MODALITIES = {"av", "audio", "video"}


def test_demo_runs_every_stage_and_reports_it(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "ssl_aver.app.cli", "demo", "--out", str(out)], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ssl-aver demo results" in proc.stdout
    stages = json.loads((out / "report.json").read_text())["stages"]
    assert list(stages) == [name for name, _ in STAGES]
    for name, summary in stages.items():
        assert summary["headline"] and name in proc.stdout, name

    assert stages["corpus"]["unlabeled_clips"] >= 40 and stages["corpus"]["crema_d_actors"] >= 8
    pretext = stages["pretext"]
    assert set(pretext["thresholds"]) == {"rms", "var_upper", "var_lower", "var_whole"} and pretext["failures"] == []
    assert set(pretext["class_counts"]["au_emotion"]) >= {"happiness", "sadness", "surprise", "anger", "other"}
    losses = stages["pretrain"]["task_losses"]
    assert set(losses) == {"energy", "face_upper", "face_lower", "au_emotion"}
    assert all(v["last"] < v["first"] for v in losses.values())
    ser = stages["ser"]
    assert set(ser["macro_f1"]) == {"supervised", "pretext"} and 0.0 <= ser["p_value"] <= 1.0
    assert set(stages["ablation"]["macro_f1"]) == {"SSL1", "SSL2", "SSL3", "SSL4", "SSL5"}
    for head in ("vavl", "two_stage", "raver"):
        assert set(stages[head]["macro_f1"]) == MODALITIES, head
    assert {"fused_baseline", "fused_jdev"} <= set(stages["mer"]["rows"])
    compared = stages["compare"]
    assert set(compared["macro_f1_av"]) == {"RAVER", "VAVL", "UAVM", "AuxFormer", "MulT", "SFAV", "TSLTM"}
    assert set(compared["macro_f1_unimodal"]) == {"Uni (A) (audio)", "Uni (V) (video)"}
    assert all(0.0 <= v <= 1.0 for v in compared["macro_f1_av"].values()) and len(compared["p_vs_reference"]) == 6
    assert (Path(compared["run"]) / "compare.md").is_file()
    assert any("(AuxFormer)" in label for label in stages["robustness"]["runs"])  # the compare systems are on the plots
    assert stages["corpus"]["msp_improv_clips"] >= 100 and stages["corpus"]["msp_improv_speakers"] == 4
    ccc = stages["regression"]["ccc"]
    assert set(ccc) == MODALITIES and all(set(v) == {"arousal", "valence", "dominance"} for v in ccc.values())
    assert ccc["av"]["arousal"] > 0.3  # the demo speech's loudness and pitch follow arousal
    assert all(Path(p).is_file() for p in stages["robustness"]["plots"])
    predictions = stages["predict"]["predictions"]
    assert {"ser", "raver"} <= set(predictions)
    assert all(row["error"] is None and row["top"] for rows in predictions.values() for row in rows)
