"""`ssl-aver bench`: the table's shape and its goal bookkeeping (never the speeds themselves)."""

from __future__ import annotations

import json
import math

import pytest

from ssl_aver.app import bench
from ssl_aver.app.cli import main


def test_goal_bookkeeping_marks_met_and_missed_goals() -> None:
    assert bench.make_row("s", "m", 10.0, "x/s", 0.9, (">=", 0.8))["met"] is True
    assert bench.make_row("s", "m", 10.0, "x/s", 0.7, (">=", 0.8))["met"] is False
    assert bench.make_row("s", "m", 1.0, "", 1.3, ("<=", 1.1))["met"] is False
    row = bench.make_row("s", "m", None, "", note="skipped")
    assert row["met"] is None and row["goal"] is None and set(row) == set(bench.ROW_KEYS)
    assert bench.make_row("s", "m", float("nan"), "", float("inf"), (">=", 1.0))["met"] is None


def test_loglog_exponent_recovers_growth_rates() -> None:
    sizes = [1.0, 4.0, 16.0]
    assert bench.loglog_exponent(sizes, [3 * s for s in sizes]) == pytest.approx(1.0)
    assert bench.loglog_exponent(sizes, [2 * s**2 for s in sizes]) == pytest.approx(2.0)
    assert bench.loglog_exponent(sizes, [5.0, 5.0, 5.0]) == pytest.approx(0.0, abs=1e-9)


def test_markdown_table_has_one_line_per_row() -> None:
    rows = [bench.make_row("1 audio", "a|b", 123.456, "s/s", 0.5, (">=", 0.8), "n"), bench.make_row("machine", "load", 1.0, "")]
    text = bench.markdown_table(rows, "t")
    assert text.count("\n| ") == 3  # header + 2 rows
    assert "NOT met" in text and "a/b" in text


def test_cli_rejects_unknown_head_and_file_out(tmp_path, capsys) -> None:
    assert main(["bench", "--preset", "tiny", "--heads", "nope", "--out", str(tmp_path / "o")]) == 2
    assert "nope" in capsys.readouterr().err
    target = tmp_path / "file"
    target.write_text("x")
    assert main(["bench", "--preset", "tiny", "--heads", "ser", "--out", str(target)]) == 2
    assert "is a file" in capsys.readouterr().err


def test_bench_cli_writes_every_stage_and_survives_a_broken_head(tmp_path, monkeypatch, capsys) -> None:
    from finetune.heads import HEADS

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setitem(HEADS, "broken", "ssl_aver.errors:UserError")  # has no defaults(): fails to build
    out = tmp_path / "bench"
    assert main(["bench", "--preset", "tiny", "--heads", "ser,broken", "--out", str(out), "--quiet"]) == 0
    rows = json.loads((out / "bench.json").read_text())
    assert isinstance(rows, list) and rows
    for row in rows:
        assert set(row) == set(bench.ROW_KEYS)
        assert isinstance(row["stage"], str) and isinstance(row["metric"], str) and isinstance(row["note"], str)
        assert row["value"] is None or math.isfinite(row["value"])
    assert {r["stage"] for r in rows} == {*bench.STAGE_NAMES, "machine"}
    failed = [r for r in rows if r["note"].startswith("failed:")]
    assert [r["metric"] for r in failed] == ["broken: training"]
    goals = [r for r in rows if r["goal"] is not None]
    metrics = {r["metric"] for r in goals}
    assert {"energy statistics + ComParE LLD", "mediapipe label pipeline, every=1", "data path: store-fed vs in-memory batches",
            "build time exponent (log-log fit)", "peak RSS growth (largest / smallest)"} <= metrics
    for row in goals:
        assert isinstance(row["ratio"], float) and isinstance(row["met"], bool)
    ser = {r["metric"]: r for r in rows if r["stage"] == "4 heads" and r["metric"].startswith("ser")}
    assert ser["ser: training"]["value"] > 0 and ser["ser: training"]["unit"] == "clips/s"
    assert ser["ser: peak memory"]["value"] > 0 and ser["ser: peak memory"]["unit"] == "MB"
    stage6 = {r["metric"]: r for r in rows if r["stage"] == "6 fine-tuning"}
    assert stage6["VAVL Algorithm-1 step, subsample 4 vs 1"]["ratio"] > 0  # the grid row is left to the quick and full presets
    assert stage6["mult: bf16 vs fp32 training"]["value"] > 0 and stage6["mult: bf16 vs fp32 training"]["ratio"] > 0
    bf16 = next(r for r in rows if r["metric"].startswith("bf16"))
    assert bf16["value"] is None and "GPU" in bf16["note"]
    markdown = (out / "bench.md").read_text()
    assert markdown.count("\n| ") == len(rows) + 1
    assert not any(p.name.startswith(".bench-work-") for p in out.iterdir())  # work files removed
    printed = capsys.readouterr().out
    assert all(r["metric"] in printed for r in goals)  # the console summary lists every goal


def test_paper_encoder_rate_runs_fp32_and_bf16_autocast() -> None:
    """The GPU rows' training step (bf16 autocast vs fp32), exercised on the CPU."""
    settings = bench.PRESETS["tiny"]
    for bf16 in (False, True):
        assert bench.paper_encoder_rate("cpu", "sdpa", bf16, settings, batch=4) > 0
