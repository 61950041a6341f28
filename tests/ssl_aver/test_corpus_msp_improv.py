"""MSP-IMPROV as distributed: Evaluation.txt headers and rater lines, media in the session tree,
partial media, malformed lines with their numbers, and the consensus letters O and X."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from ssl_aver.corpora.labelled import MANIFEST_COLUMNS
from ssl_aver.corpora.msp_improv import clip_id, parse_clip_name, prepare_msp_improv
from ssl_aver.errors import UserError
from tests.corpus_builders import write_media, write_msp_improv

EVALUATION = """\
UTD-IMPROV-S01A-F01-R-FM01.avi; A; A:4.000000; V:2.000000; D:3.500000 ; N:5.000000;
WK001; Angry; Frustrated,Annoyed; A:4.000000; V:2.000000; D:4.000000; N:5.000000;
WK002; Angry; ; A:5.000000; V:1.000000; D:3.000000; N:5.000000;
WK003; Sad; Depressed; weary; A:3.000000; V:3.000000; D:3.000000; N:5.000000;
WK004; Other; Bored; A:4.000000; V:2.000000; D:4.000000; N:5.000000;
WK002; Angry; ; A:5.000000; V:1.000000; D:3.000000; N:5.000000;
WK005; Angry; A:4.000000; V:2.000000; D:4.000000; N:5.000000;

UTD-IMPROV-S02H-M01-P-MF03.avi; H; A:3.200000; V:4.100000; D:NaN ; N:3.500000;
WK001; Happy; ; A:3.000000; V:4.000000; D:NaN; N:3.000000;
WK006; Neutral; ; A:3.000000; V:4.000000; D:NaN; N:4.000000;
WK007; Happy; Excited; A:4.000000; V:5.000000; D:NaN; N:3.000000;
WK008; Neutral; ; A:3.000000; V:3.000000; D:NaN; N:4.000000;

UTD-IMPROV-S03S-F02-S-FM02.avi; O; A:2.000000; V:2.500000; D:2.000000 ; N:4.000000;
WK001; Other; Worried; A:2.000000; V:2.000000; D:2.000000; N:4.000000;
WK002; Other; Worried; A:2.000000; V:3.000000; D:2.000000; N:4.000000;
WK003; Sad; ; A:2.000000; V:2.500000; D:2.000000; N:4.000000;

UTD-IMPROV-S04N-M02-T-MF01.avi; X; A:2.500000; V:3.000000; D:3.000000 ; N:4.500000;
WK001; Angry; ; A:3.000000; V:2.000000; D:3.000000; N:4.000000;
WK002; Happy; ; A:3.000000; V:4.000000; D:3.000000; N:5.000000;
WK003; Sad; ; A:2.000000; V:2.000000; D:3.000000; N:4.000000;
WK004; Neutral; ; A:2.000000; V:4.000000; D:3.000000; N:5.000000;

UTD-IMPROV-S05A-F01-P-FM07.avi; O; A:3.000000; V:3.000000; D:3.000000 ; N:4.000000;
WK009; Other; Surprised; A:3.000000; V:3.000000; D:3.000000; N:4.000000;
WK010; Other; Surprised; A:3.000000; V:3.000000; D:3.000000; N:4.000000;

UTD-IMPROV-S06S-F01-R-FM01.avi; S; A:1.500000; V:1.500000; D:2.000000 ; N:5.000000;
WK001; Sad; ; A:1.000000; V:1.000000; D:2.000000; N:5.000000;
"""

A_CLIP, H_CLIP, O_CLIP, X_CLIP, OTHER_ONLY, NO_MEDIA = (
    "MSP-IMPROV-S01A-F01-R-FM01", "MSP-IMPROV-S02H-M01-P-MF03", "MSP-IMPROV-S03S-F02-S-FM02",
    "MSP-IMPROV-S04N-M02-T-MF01", "MSP-IMPROV-S05A-F01-P-FM07", "MSP-IMPROV-S06S-F01-R-FM01",
)
UNLISTED = "MSP-IMPROV-S07H-M01-R-MF01"


#: clip -> its media ("av" / "a" / "v"): partial media, and a clip with media but no label block
MEDIA = {A_CLIP: "av", H_CLIP: "a", O_CLIP: "v", X_CLIP: "a", OTHER_ONLY: "a", UNLISTED: "av"}


def _corpus(root: Path, evaluation: str = EVALUATION, media: dict[str, str] | None = None) -> Path:
    return write_msp_improv(root, evaluation, MEDIA if media is None else media)


def _row(corpus, clip: str) -> dict:
    rows = corpus.clips[corpus.clips["clip"] == clip]
    assert len(rows) == 1, f"{clip} not in the table"
    return rows.iloc[0].to_dict()


def _values(row: dict, prefix: str) -> list[float]:
    return [row[f"{prefix}_{c}"] for c in ("anger", "happiness", "sadness", "neutral")]


def _same(got: list[float], want: list[float]) -> bool:
    return all((math.isnan(g) and math.isnan(w)) or g == pytest.approx(w) for g, w in zip(got, want))


def test_clip_names_map_and_parse() -> None:
    assert clip_id("UTD-IMPROV-S01A-F01-R-FM01.avi") == "MSP-IMPROV-S01A-F01-R-FM01"
    assert clip_id("MSP-IMPROV-S01A-F01-R-FM01") == "MSP-IMPROV-S01A-F01-R-FM01"
    assert parse_clip_name("MSP-IMPROV-S12H-M06-T-MF21") == {
        "sentence": "S12H", "target_emotion": "happiness", "speaker": "M06", "sex": "Male", "session": "6", "recording": "T",
    }
    assert parse_clip_name("MSP-IMPROV-S01A-F01") is None


def test_every_field_of_a_small_corpus(tmp_path: Path) -> None:
    root = _corpus(tmp_path / "improv")
    corpus = prepare_msp_improv(root)
    assert corpus.name == "msp_improv"
    assert corpus.classes == ["anger", "happiness", "sadness", "neutral"]
    assert corpus.targets == {
        "multiclass": {"consensus": ["consensus_anger", "consensus_happiness", "consensus_sadness", "consensus_neutral"]},
        "distribution": {"votes": ["share_anger", "share_happiness", "share_sadness", "share_neutral"]},
        "multilabel": {"votes": ["present_anger", "present_happiness", "present_sadness", "present_neutral"]},
        "regression": {"attributes": ["arousal", "valence", "dominance"]},
    }
    assert list(corpus.clips.columns[: len(MANIFEST_COLUMNS)]) == list(MANIFEST_COLUMNS)
    assert list(corpus.clips["clip"]) == sorted([A_CLIP, H_CLIP, O_CLIP, X_CLIP, OTHER_ONLY])

    a = _row(corpus, A_CLIP)
    assert a["audio"] == str(root / "session1" / "S01A" / "R" / f"{A_CLIP}.wav")
    assert a["video"] == str(root / "session1" / "S01A" / "R" / f"{A_CLIP}.avi")
    assert (a["speaker"], a["sex"], a["session"], a["age"], a["race"], a["partition"]) == ("F01", "Female", "1", None, None, None)
    assert (a["sentence"], a["target_emotion"], a["recording"], a["consensus"]) == ("S01A", "anger", "R", "A")
    assert (a["arousal"], a["valence"], a["dominance"], a["naturalness"]) == (4.0, 2.0, 3.5, 5.0)
    # WK002 is listed twice and counts once; WK004's Other leaves the shares; WK003's labels hold a ";"
    assert a["raters"] == 5
    assert _values(a, "consensus") == [1.0, 0.0, 0.0, 0.0]
    assert _values(a, "share") == pytest.approx([0.75, 0.0, 0.25, 0.0])
    assert _values(a, "present") == [1.0, 0.0, 0.0, 0.0]  # 1 of 4 is not above 1/4

    h = _row(corpus, H_CLIP)
    assert (h["audio"], h["video"]) == (str(root / "session1" / "S02H" / "P" / f"{H_CLIP}.wav"), "")
    assert (h["speaker"], h["sex"], h["session"], h["recording"], h["target_emotion"]) == ("M01", "Male", "1", "P", "happiness")
    assert (h["arousal"], h["valence"]) == (3.2, 4.1) and math.isnan(h["dominance"])
    assert _values(h, "consensus") == [0.0, 1.0, 0.0, 0.0]
    assert _values(h, "share") == pytest.approx([0.0, 0.5, 0.0, 0.5])
    assert _values(h, "present") == [0.0, 1.0, 0.0, 1.0]

    o = _row(corpus, O_CLIP)
    assert (o["audio"], o["video"]) == ("", str(root / "session2" / "S03S" / "S" / f"{O_CLIP}.avi"))
    assert (o["speaker"], o["sex"], o["session"], o["consensus"]) == ("F02", "Female", "2", "O")
    assert all(math.isnan(v) for v in _values(o, "consensus")), "O has no class: the one-hot row is NaN"
    assert _values(o, "share") == [0.0, 0.0, 1.0, 0.0]
    assert _values(o, "present") == [0.0, 0.0, 1.0, 0.0]
    assert (o["arousal"], o["valence"], o["dominance"]) == (2.0, 2.5, 2.0)

    x = _row(corpus, X_CLIP)
    assert (x["speaker"], x["sex"], x["session"], x["recording"], x["consensus"]) == ("M02", "Male", "2", "T", "X")
    assert all(math.isnan(v) for v in _values(x, "consensus")), "X (no agreement) has no class"
    assert _values(x, "share") == pytest.approx([0.25] * 4)
    assert _values(x, "present") == [0.0] * 4

    other = _row(corpus, OTHER_ONLY)
    assert _same(_values(other, "share") + _values(other, "present"), [math.nan] * 8), "only Other votes: no distribution"

    reasons = {f["clip"]: f["reason"] for f in corpus.failures if "clip" in f}
    assert set(reasons) == {NO_MEDIA, UNLISTED}
    assert "no media" in reasons[NO_MEDIA] and "Evaluation.txt" in reasons[UNLISTED]
    no_media = next(f for f in corpus.failures if f.get("clip") == NO_MEDIA)
    assert (no_media["source"], no_media["line"]) == ("Evaluation.txt", 30)
    assert all("clip" in f for f in corpus.failures), "every line of the file was read"

    summary = corpus.summary()
    assert summary["clips"] == 5 and summary["speakers"] == 4
    assert (summary["audio_found"], summary["video_found"]) == (4, 2)
    assert summary["targets"]["multiclass/consensus"]["labelled"] == 2
    assert summary["targets"]["regression/attributes"]["labelled"] == 4


def test_options_change_shares_duplicates_arousal_and_recordings(tmp_path: Path) -> None:
    root = _corpus(tmp_path / "improv")
    counted = prepare_msp_improv(root, other_votes="count", duplicate_raters="keep")
    a = _row(counted, A_CLIP)
    assert a["raters"] == 6
    assert _values(a, "share") == pytest.approx([4 / 6, 0.0, 1 / 6, 0.0])
    assert _values(a, "present") == [1.0, 0.0, 0.0, 0.0]
    o = _row(counted, O_CLIP)
    assert _values(o, "share") == pytest.approx([0.0, 0.0, 1 / 3, 0.0])
    assert _values(o, "present") == [0.0, 0.0, 1.0, 0.0]  # 1 of 3 is above 1/4
    assert _values(_row(counted, OTHER_ONLY), "share") == [0.0] * 4

    reversed_ = prepare_msp_improv(root, reverse_arousal=True)
    assert _row(reversed_, A_CLIP)["arousal"] == 2.0 and _row(reversed_, A_CLIP)["valence"] == 2.0

    read_only = prepare_msp_improv(root, recordings=["R"])
    assert list(read_only.clips["clip"]) == [A_CLIP]
    assert {f["clip"] for f in read_only.failures} == {NO_MEDIA, UNLISTED}


def test_malformed_lines_are_reported_with_their_numbers(tmp_path: Path) -> None:
    text = "\n".join([
        "WK000; Angry; ; A:3.000000; V:3.000000; D:3.000000; N:3.000000;",  # 1: before any utterance
        "UTD-IMPROV-S01A-F01-R-FM01.avi; A; A:4.000000; V:2.000000; D:3.500000 ; N:5.000000;",  # 2
        "WK001; Angry; ; A:4.000000; V:2.000000; D:4.000000; N:5.000000;",  # 3
        "WK002; Bored; ; A:4.000000; V:2.000000; D:4.000000; N:5.000000;",  # 4: unknown emotion
        "WK003; Sad; ; A:high; V:2.000000; D:4.000000; N:5.000000;",  # 5: score is not a number
        "WK004; Sad; ; A:4.000000; V:2.000000; D:4.000000;",  # 6: N missing
        "WK005; Angry; ; A:4.000000; V:2.000000; D:4.000000; N:5.000000;",  # 7
        "",  # 8
        "UTD-IMPROV-S02H-M01-P-MF03.avi; Q; A:3.2; V:4.1; D:3.0 ; N:3.5;",  # 9: unknown consensus letter
        "WK006; Sad; ; A:1.000000; V:1.000000; D:1.000000; N:1.000000;",  # 10: skipped with its header
        "WK007; Sad; ; A:1.000000; V:1.000000; D:1.000000; N:1.000000;",  # 11: skipped with its header
        "UTD-IMPROV-S03S-F02-S-FM02.avi; S; A:2.0; V:2.5; D:2.0;",  # 12: N missing
        "UTD-IMPROV-S0XS-F02-S-FM02.avi; S; A:2.0; V:2.5; D:2.0 ; N:4.0;",  # 13: clip name does not parse
        "UTD-IMPROV-S01A-F01-R-FM01.avi; H; A:1.0; V:1.0; D:1.0 ; N:1.0;",  # 14: listed again
        "WK008; Happy; ; A:1.000000; V:1.000000; D:1.000000; N:1.000000;",  # 15: skipped with its header
        "UTD-IMPROV-S04N-M02-T-MF01.avi; N; A:2.0; V:3.0; D:3.0 ; N:4.5;",  # 16
        "WK009; Neutral; ; A:2.000000; V:3.000000; D:3.000000; N:4.000000;",  # 17
    ]) + "\n"
    root = _corpus(tmp_path / "improv", text, media={A_CLIP: "a", H_CLIP: "a", X_CLIP: "a"})
    corpus = prepare_msp_improv(root)
    lines = {f["line"]: f for f in corpus.failures if "line" in f}
    assert sorted(lines) == [1, 4, 5, 6, 9, 12, 13, 14]
    assert "before any utterance" in lines[1]["reason"]
    assert all(lines[n]["reason"].startswith(f"malformed rater line for {A_CLIP}") for n in (4, 5, 6))
    assert all(f["source"] == "Evaluation.txt" and "clip" not in f for f in lines.values()), "a bad line drops no clip by itself"
    assert all("malformed utterance line" in lines[n]["reason"] for n in (9, 12, 13))
    assert "listed again (first at line 2)" in lines[14]["reason"]
    assert lines[9]["skipped_rater_lines"] == 2 and lines[14]["skipped_rater_lines"] == 1
    assert lines[4]["text"].startswith("WK002; Bored")
    a = _row(corpus, A_CLIP)
    assert a["raters"] == 2 and a["consensus"] == "A", "bad lines drop only themselves; the repeat block is ignored"
    assert _values(a, "share") == [1.0, 0.0, 0.0, 0.0]
    assert list(corpus.clips["clip"]) == [A_CLIP, X_CLIP]
    assert {f["clip"] for f in corpus.failures if "clip" in f} == {H_CLIP}, "its header was unreadable: media without an entry"
    assert _row(corpus, X_CLIP)["raters"] == 1


def test_user_errors_name_the_thing_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="folder not found"):
        prepare_msp_improv(tmp_path / "absent")
    root = _corpus(tmp_path / "improv")
    with pytest.raises(UserError, match="options.evaluation"):
        prepare_msp_improv(root, evaluation="Labels/Evaluation.txt")
    for option, match in (({"other_votes": "all"}, "other_votes"), ({"duplicate_raters": "mean"}, "duplicate_raters"), ({"recordings": ["Q"]}, "recordings")):
        with pytest.raises(UserError, match=match):
            prepare_msp_improv(root, **option)
    garbage = _corpus(tmp_path / "garbage", "clip,label\nx,y\n")
    with pytest.raises(UserError, match=r"no utterance line could be read .*line 1"):
        prepare_msp_improv(garbage)
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "Evaluation.txt").write_text(EVALUATION, encoding="utf-8")
    with pytest.raises(UserError, match="no MSP-IMPROV media"):
        prepare_msp_improv(bare)


def test_labels_in_another_place_and_media_in_split_trees(tmp_path: Path) -> None:
    """Some copies keep audio and video in separate trees and the labels elsewhere."""
    root = write_media(tmp_path / "improv", [f"Audio/session1/S01A/R/{A_CLIP}.wav", f"Video/session1/S01A/R/{A_CLIP}.avi",
                                             f"Audio/session1/S01A/R/._{A_CLIP}.wav"])
    labels = tmp_path / "labels.txt"
    labels.write_text(EVALUATION, encoding="utf-8")
    corpus = prepare_msp_improv(root, evaluation=str(labels))
    a = _row(corpus, A_CLIP)
    assert a["audio"].endswith(f"Audio/session1/S01A/R/{A_CLIP}.wav") and a["video"].endswith(f"Video/session1/S01A/R/{A_CLIP}.avi")
    assert len(corpus.clips) == 1
