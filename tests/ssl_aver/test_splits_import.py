"""`ssl-aver splits import`: published clip-level partitions (paper 2's format) as a splits file."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from ssl_aver.app.cli import main
from ssl_aver.errors import UserError
from ssl_aver.splits import ClipSplit, apply_split, load_splits
from ssl_aver.splits_import import read_partition

#: six actors with three clips each; the published trials below list only some of them
CLIPS = [f"{actor}_{sentence}_ANG_XX" for actor in range(1001, 1007) for sentence in ("DFA", "IEO", "TIE")]
SHARES = "0.2,0.16,0.16,0.16,0.16,0.16"  # angry, sad, disgust, fear, neutral, happy (smoothed vote shares)


def _published(path: Path, sets: dict[str, str]) -> Path:
    """A trial file as paper 2's authors publish it: FileName with .wav, six shares, SpkrID, Gender, Split_Set."""
    lines = ["FileName,angry,sad,disgust,fear,neutral,happy,SpkrID,Gender,Split_Set"]
    lines += [f"{clip}.wav,{SHARES},{clip[:4]},{'Male' if int(clip[3]) % 2 else 'Female'},{part}" for clip, part in sets.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def _labels() -> pd.DataFrame:
    return pd.DataFrame({"clip": CLIPS, "actor": [c[:4] for c in CLIPS]})


def test_published_trials_drive_apply_split_and_leave_unlisted_clips_out(tmp_path: Path) -> None:
    trial_1 = {c: {"1001": "Train", "1002": "Train", "1003": "Development", "1004": "Test"}[c[:4]] for c in CLIPS if c[:4] <= "1004"}
    trial_1.pop("1001_TIE_ANG_XX")  # a partition may leave any clip out
    trial_2 = {c: {"1003": "Train", "1004": "Train", "1005": "Development", "1006": "Test"}[c[:4]] for c in CLIPS if c[:4] >= "1003"}
    files = [_published(tmp_path / "trial_1.csv", trial_1), _published(tmp_path / "trial_2.csv", trial_2)]
    out = tmp_path / "splits.csv"
    assert main(["splits", "import", *map(str, files), "--out", str(out)]) == 0
    splits = load_splits(out)
    assert len(splits) == 2 and all(isinstance(s, ClipSplit) for s in splits)
    parts = apply_split(_labels(), splits[0])
    assert set(parts["train"]["clip"]) == {c for c in trial_1 if c[:4] in ("1001", "1002")}
    assert set(parts["dev"]["actor"]) == {"1003"} and set(parts["test"]["actor"]) == {"1004"}
    used = set(pd.concat(parts.values())["clip"])
    assert used == set(trial_1) and "1001_TIE_ANG_XX" not in used and not any(c[:4] in ("1005", "1006") for c in used)
    second = apply_split(_labels(), splits[1])
    assert set(second["test"]["actor"]) == {"1006"} and not any(c[:4] in ("1001", "1002") for c in pd.concat(second.values())["clip"])


def test_lower_case_columns_and_set_names_in_any_case(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text("clip,set\nAudioWAV/1001_DFA_ANG_XX.wav,TRAIN\n1002_DFA_ANG_XX,dev\n1003_DFA_ANG_XX.flv,test\n1003_IEO_ANG_XX,Test\n")
    split = read_partition(path)
    assert split == {"1001_DFA_ANG_XX": "train", "1002_DFA_ANG_XX": "dev", "1003_DFA_ANG_XX": "test", "1003_IEO_ANG_XX": "test"}
    assert split.actors["1003_IEO_ANG_XX"] == "1003"


def test_a_partition_that_mixes_an_actor_over_sets_is_refused_unless_allowed(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    sets = {c: {"1001": "Train", "1002": "Development", "1003": "Test"}[c[:4]] for c in CLIPS if c[:4] <= "1003"}
    sets["1002_TIE_ANG_XX"] = "Test"  # actor 1002 in dev and in test
    path = _published(tmp_path / "mixed.csv", sets)
    out = tmp_path / "splits.csv"
    assert main(["splits", "import", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "actor 1002" in err and "--allow-shared-speakers" in err
    assert not out.exists()
    assert main(["splits", "import", str(path), "--out", str(out), "--allow-shared-speakers"]) == 0
    assert load_splits(out)[0]["1002_TIE_ANG_XX"] == "test"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("FileName,Split_Set\n1001_DFA_ANG_XX.wav,Train\n1002_DFA_ANG_XX.wav,Validation\n", "unknown set 'Validation'"),
        ("FileName,Gender\n1001_DFA_ANG_XX.wav,Male\n", "needs a clip column"),
        ("FileName,Split_Set\n1001_DFA_ANG_XX.wav,Train\n1001_DFA_ANG_XX.flv,Test\n1002_DFA_ANG_XX,Development\n", "listed twice"),
        ("FileName,Split_Set\n1001_DFA_ANG_XX.wav,Train\n1002_DFA_ANG_XX.wav,Test\n", r"no clip in \['dev'\]"),
        ("FileName,Split_Set\nspeech_01.wav,Train\n", "has no speaker"),
    ],
)
def test_malformed_partitions_are_user_errors(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "p.csv"
    path.write_text(body)
    with pytest.raises(UserError, match=message):
        read_partition(path)
