"""`ssl-aver evaluate`: files in, metrics.json + metrics.md out; bad inputs end in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from ssl_aver.app.cli import main
from ssl_aver.metrics import binarize

CLASSES = ["anger", "disgust", "fear", "happiness", "neutral", "sadness"]


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    clips = [f"10{i:02d}_IEO_NEU_XX" for i in range(40)]
    probs = rng.dirichlet(np.ones(6), size=40)
    counts = rng.integers(0, 5, size=(40, 6))
    pred = pd.DataFrame(probs, columns=CLASSES).assign(clip=clips)
    # labels: a different column order, two extra clips, and a condition prefix like labels.csv
    labels = pd.DataFrame(counts, columns=[f"av_{c}" for c in CLASSES]).assign(clip=clips)
    labels = pd.concat([labels, labels.iloc[:2].assign(clip=["x1", "x2"])])[::-1]
    groups = pd.DataFrame({"clip": clips, "sex": ["Male", "Female"] * 20, "age": ["<30"] * 40})
    paths = {"pred": tmp_path / "p.csv", "labels": tmp_path / "l.csv", "groups": tmp_path / "g.csv"}
    pred.to_csv(paths["pred"], index=False)
    labels.to_csv(paths["labels"], index=False)
    groups.to_csv(paths["groups"], index=False)
    paths["probs"], paths["counts"] = probs, counts  # type: ignore[assignment]
    return paths


def test_evaluate_writes_metrics_json_and_table(files: dict, tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = ["evaluate", "--pred", str(files["pred"]), "--labels", str(files["labels"]), "--label-pattern", "av_{}",
            "--groups", str(files["groups"]), "--group-columns", "sex", "--task", "multilabel",
            "--out", str(out), "--bootstrap", "50", "--seed", "1"]
    assert main(argv) == 0
    result = json.loads((out / "metrics.json").read_text())
    for key in ("accuracy", "macro_f1", "micro_f1", "weighted_f1", "macro_precision", "macro_recall",
                "micro_precision", "micro_recall", "weighted_precision", "weighted_recall",
                "sample_precision", "brier", "per_class_f1", "ci", "fairness"):
        assert key in result
    expected = f1_score(binarize(files["counts"]), binarize(files["probs"]), average="macro", zero_division=0)
    assert result["macro_f1"] == pytest.approx(expected)
    assert result["n"] == 40 and result["n_labels_only"] == 2 and result["n_pred_only"] == 0
    assert set(result["fairness"]) == {"sex"} and set(result["fairness"]["sex"]["groups"]) == {"Female", "Male"}
    assert len(result["ci"]["macro_f1"]) == 2
    table = (out / "metrics.md").read_text()
    assert "| macro_f1 |" in table and "## Fairness by sex" in table
    assert main(argv[:-4] + ["--out", str(tmp_path / "again"), "--bootstrap", "50", "--seed", "1"]) == 0
    assert json.loads((tmp_path / "again" / "metrics.json").read_text())["ci"] == result["ci"]


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str], out: Path, match: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err, err
    assert not out.exists()


def test_input_errors_are_one_line_and_write_nothing(files: dict, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "never"
    base = ["evaluate", "--task", "multilabel", "--out", str(out), "--bootstrap", "0"]
    pred, labels = str(files["pred"]), str(files["labels"])
    _fails(base + ["--pred", str(tmp_path / "nope.csv"), "--labels", labels], capsys, out, "not found")
    _fails(base + ["--pred", pred, "--labels", labels], capsys, out, "class columns differ")

    other = tmp_path / "other.csv"
    pd.read_csv(files["labels"]).assign(clip=lambda t: "z" + t["clip"]).to_csv(other, index=False)
    _fails(base + ["--pred", pred, "--labels", str(other), "--label-pattern", "av_{}"], capsys, out, "no clip")

    text = tmp_path / "text.csv"
    table = pd.read_csv(files["labels"], dtype={"av_fear": str})
    table.loc[5, "av_fear"] = "many"
    table.to_csv(text, index=False)
    _fails(base + ["--pred", pred, "--labels", str(text), "--label-pattern", "av_{}"], capsys, out, "'av_fear'")

    _fails(base + ["--pred", pred, "--labels", labels, "--label-pattern", "av_{}", "--groups", str(files["groups"]),
                   "--group-columns", "race"], capsys, out, "lacks columns ['race']")
