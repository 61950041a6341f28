import pytest

from ssl_aver.windows import window_bounds


@pytest.mark.parametrize(
    "duration, expected",
    [
        (0.4, []),
        (0.5, [(0.0, 0.5)]),
        (1.0, [(0.0, 1.0)]),
        (2.0, [(0.0, 2.0)]),
        (3.5, [(0.0, 2.0), (1.5, 3.5)]),
        (5.0, [(0.0, 2.0), (1.5, 3.5), (3.0, 5.0)]),
        (4.9, [(0.0, 2.0), (1.5, 3.5)]),
    ],
)
def test_paper_window_rule(duration, expected):
    assert [(w.start, w.end) for w in window_bounds(duration)] == expected


def test_windows_are_indexed_and_overlap_half_a_second():
    wins = window_bounds(60.0)
    assert [w.index for w in wins] == list(range(len(wins)))
    assert len(wins) == 39  # (60 - 2) / 1.5 + 1
    assert all(b.start - a.start == pytest.approx(1.5) and a.end - b.start == pytest.approx(0.5) for a, b in zip(wins, wins[1:]))


def test_invalid_window_settings_are_rejected():
    with pytest.raises(ValueError):
        window_bounds(5.0, length=2.0, overlap=2.0)
