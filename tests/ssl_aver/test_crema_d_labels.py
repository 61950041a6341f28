"""CREMA-D labels from the real tabulatedVotes.csv: hand-checked clips, ties, the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from ssl_aver.app.cli import main
from ssl_aver.corpora.crema_d import read_demographics
from ssl_aver.crema_d_labels import EMOTIONS, crema_d_labels, load_votes
from ssl_aver.data import CREMA_D_DIR
from ssl_aver.errors import UserError

VOTES = CREMA_D_DIR / "tabulatedVotes.csv"
DEMO = CREMA_D_DIR / "VideoDemographics.csv"


@pytest.fixture(scope="module")
def labels() -> pd.DataFrame:
    return crema_d_labels(load_votes(VOTES), read_demographics(DEMO)).set_index("clip")


def _hot(row: pd.Series, cond: str) -> set[str]:
    return {e for e in EMOTIONS if row[f"{cond}_{e}"] == 1}


def test_hand_counted_clip_differs_across_conditions(labels: pd.DataFrame) -> None:
    # tabulatedVotes.csv rows 100002 / 200002 / 300002 (1001_IEO_HAP_LO):
    # voice H=3 N=6 of 9; face H=9 N=1 of 10; audio-visual H=8 N=1 of 9.
    row = labels.loc["1001_IEO_HAP_LO"]
    assert row["voice_votes"] == 9 and row["face_votes"] == 10 and row["av_votes"] == 9
    assert row["voice_happiness_p"] == pytest.approx(3 / 9)
    assert row["voice_neutral_p"] == pytest.approx(6 / 9)
    assert row["voice_anger_p"] == 0.0
    assert row["face_happiness_p"] == pytest.approx(0.9)
    assert _hot(row, "voice") == {"happiness", "neutral"}
    assert _hot(row, "face") == {"happiness"}  # 1 of 10 neutral votes is below 1/6
    assert _hot(row, "av") == {"happiness"}
    assert (row["voice_label"], row["face_label"], row["av_label"]) == ("neutral", "happiness", "happiness")
    assert (row["sex"], row["age"], row["age_group"], row["race"], row["ethnicity"]) == (
        "Male", "51", "50-59", "Caucasian", "Not Hispanic")


def test_share_of_exactly_one_sixth_is_not_positive(labels: pd.DataFrame) -> None:
    # row 100258 (1004_IEO_FEA_HI, voice): A0 D2 F2 H0 N5 S3 of 12 -> 2/12 is exactly 1/6.
    row = labels.loc["1004_IEO_FEA_HI"]
    assert row["voice_disgust_p"] == pytest.approx(2 / 12)
    assert _hot(row, "voice") == {"neutral", "sadness"}
    assert row["voice_label"] == "neutral" and row["voice_tie"] == 1
    assert (row["sex"], row["age_group"]) == ("Female", "40-49")


def test_tie_break_rules_on_real_ties() -> None:
    votes = load_votes(VOTES)
    # row 100009 (1001_IEO_ANG_MD, voice): A5 D5 N1 S1; mean intensity anger 37.2, disgust 58.6.
    # row 100056 (1001_ITH_ANG_XX, voice): A3 D3 F1 N3; intensity anger 39, disgust 89, neutral 83.7.
    by_rule = {r: crema_d_labels(votes, tie_break=r).set_index("clip") for r in ("intensity", "order", "drop")}
    assert by_rule["intensity"].loc["1001_IEO_ANG_MD", "voice_label"] == "disgust"
    assert by_rule["order"].loc["1001_IEO_ANG_MD", "voice_label"] == "anger"
    assert by_rule["drop"].loc["1001_IEO_ANG_MD", "voice_label"] is None
    assert by_rule["intensity"].loc["1001_ITH_ANG_XX", "voice_label"] == "disgust"
    assert by_rule["order"].loc["1001_ITH_ANG_XX", "voice_label"] == "anger"
    row = by_rule["drop"].loc["1001_ITH_ANG_XX"]
    assert row["voice_tie"] == 3
    assert _hot(row, "voice") == {"anger", "disgust", "neutral"}  # fear 1/10 is below 1/6
    # the same clip rated audio-visually (row 300056: A3 D5 H1 of 9) has no tie
    assert row["av_label"] == "disgust" and _hot(row, "av") == {"anger", "disgust"}
    with pytest.raises(UserError, match="tie-break"):
        crema_d_labels(votes, tie_break="vote")


def test_whole_corpus_agrees_with_the_corpus_summary_table(labels: pd.DataFrame) -> None:
    assert len(labels) == 7442 and labels["actor"].nunique() == 91
    summary = pd.read_csv(CREMA_D_DIR / "summaryTable.csv").set_index("FileName").loc[labels.index]
    codes = dict(zip("ADFHNS", EMOTIONS))
    for cond, column in (("voice", "VoiceVote"), ("face", "FaceVote"), ("av", "MultiModalVote")):
        tied = summary[column].str.contains(":")
        assert int((labels[f"{cond}_tie"] > 1).sum()) == int(tied.sum())
        plain = ~tied
        assert (summary.loc[plain, column].map(codes) == labels.loc[plain, f"{cond}_label"]).all()
        props = labels[[f"{cond}_{e}_p" for e in EMOTIONS]].sum(axis=1)
        assert ((props - 1.0).abs() < 1e-9).all()
    assert int((labels["voice_tie"] > 1).sum()) == 644
    assert not labels["voice_label"].equals(labels["av_label"])
    assert labels[["sex", "race", "age_group"]].notna().all().all()


def _write_rows(path: Path, clips: set[str], drop: str | None = None, add: str | None = None) -> Path:
    table = pd.read_csv(VOTES)
    table = table[table["fileName"].isin(clips)]
    if drop:
        table = table.drop(columns=[drop])
    if add:
        table[add] = 1
    table.to_csv(path, index=False)
    return path


def test_load_votes_names_missing_and_unknown_columns(tmp_path: Path) -> None:
    clips = {"1001_IEO_HAP_LO"}
    with pytest.raises(UserError, match="missing columns \\['meanSadResp'\\]"):
        load_votes(_write_rows(tmp_path / "a.csv", clips, drop="meanSadResp"))
    with pytest.raises(UserError, match="unknown columns \\['rater'\\]"):
        load_votes(_write_rows(tmp_path / "b.csv", clips, add="rater"))
    with pytest.raises(UserError, match="not found"):
        load_votes(tmp_path / "none.csv")


def test_cli_writes_labels_and_summary_and_lists_actors_without_demographics(tmp_path: Path) -> None:
    votes = _write_rows(tmp_path / "votes.csv", {"1001_IEO_HAP_LO", "1001_IEO_ANG_MD", "1002_IEO_NEU_XX"})
    demo = tmp_path / "demo.csv"
    demo.write_text('"ActorID","Age","Sex","Race","Ethnicity"\n1001,51,"Male","Caucasian","Not Hispanic"\n')
    out = tmp_path / "out"
    assert main(["crema-d", "labels", "--votes", str(votes), "--demographics", str(demo),
                 "--tie-break", "order", "--out", str(out)]) == 0
    table = pd.read_csv(out / "labels.csv", dtype={"actor": str})
    assert sorted(table["clip"]) == ["1001_IEO_ANG_MD", "1001_IEO_HAP_LO", "1002_IEO_NEU_XX"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["clips"] == 3 and math.isclose(summary["threshold"], 1 / 6)
    assert summary["actors_without_demographics"] == ["1002"]
    # voice multi-hot: HAP_LO {happiness, neutral}, ANG_MD {anger, disgust}, and NEU_XX
    # (row 100083: F1 N8 of 9) {neutral}
    assert summary["positives"]["voice"] == {
        "anger": 1, "disgust": 1, "fear": 0, "happiness": 1, "neutral": 2, "sadness": 0}
    assert summary["cardinality"]["voice"] == {"0": 0, "1": 1, "2": 2}
    assert sum(summary["cardinality"]["av"].values()) == 3
    assert summary["ties"]["voice"] == 1 and summary["tie_break"] == "order"


def test_cli_reports_a_bad_votes_file_as_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("clip,A\nx,1\n")
    assert main(["crema-d", "labels", "--votes", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "missing columns" in err
    assert not (tmp_path / "o").exists()


def test_demo_stage_on_real_rows_of_three_actors(tmp_path: Path) -> None:
    from ssl_aver.app.demo import DemoContext
    from ssl_aver.app.stages.corpora import crema_labels_stage

    ctx = DemoContext(out=tmp_path)
    root = ctx.data / "crema-d"
    (root / "processedResults").mkdir(parents=True)
    table = pd.read_csv(VOTES)
    table = table[table["fileName"].str[:4].isin(["1001", "1002", "1003"])]
    table.to_csv(root / "processedResults" / "tabulatedVotes.csv", index=False)
    (root / "VideoDemographics.csv").write_text(DEMO.read_text())
    summary = crema_labels_stage(ctx)
    assert summary["actors"] == 3 and summary["clips"] == len(table) // 3
    assert summary["test_actors_per_split"] == [1, 1, 1]
    assert 0.0 < summary["voice_raters_macro_f1"] < 1.0
    out = tmp_path / "crema_labels"
    assert {p.name for p in out.iterdir()} >= {"labels.csv", "summary.json", "splits.csv",
                                                "voice_raters_vs_av_labels.json", "voice_raters_vs_av_labels.md"}
    json.dumps(summary)
