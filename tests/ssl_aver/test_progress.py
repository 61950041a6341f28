"""ssl_aver.progress: tqdm on a terminal, whole lines on the interval everywhere else."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest
import tqdm.std

from ssl_aver import progress
from ssl_aver.errors import UserError
from ssl_aver.progress import LineProgress, tqdm as progress_bar


class FakeClock:
    """time.monotonic for ssl_aver.progress, moved by hand."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(progress.time, "monotonic", fake)
    return fake


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_stream_gets_whole_lines_on_the_interval_and_a_final_100_percent_line(monkeypatch, clock) -> None:
    monkeypatch.setenv("SSL_AVER_PROGRESS_INTERVAL", "2.5")
    out = io.StringIO()
    for _ in progress_bar(range(20), desc="features speech", unit="clip", file=out):
        clock.t += 0.5  # 2 clips/s: a line is due every 5 clips (t = 2.5, 5, 7.5, 10 s)
    text = out.getvalue()
    assert "\r" not in text and text.endswith("\n")
    assert text.splitlines() == [
        "features speech: 5/20 clips (25%), 2.0 clip/s, elapsed 0:02, eta 0:07",
        "features speech: 10/20 clips (50%), 2.0 clip/s, elapsed 0:05, eta 0:05",
        "features speech: 15/20 clips (75%), 2.0 clip/s, elapsed 0:07, eta 0:02",
        "features speech: 20/20 clips (100%), 2.0 clip/s, elapsed 0:10",
    ]


def test_default_interval_is_30_s_and_a_short_run_prints_only_its_final_line(monkeypatch, clock) -> None:
    monkeypatch.delenv("SSL_AVER_PROGRESS_INTERVAL", raising=False)
    out = io.StringIO()
    bar = progress_bar(total=0, desc="robustness", unit="batch", file=out)
    bar.total += 4  # the robustness runner grows its total per split
    bar.refresh()
    for _ in range(4):
        clock.t += 7.0  # 28 s in all: under the 30 s default
        bar.update(1)
    bar.close()
    bar.close()
    assert out.getvalue() == "robustness: 4/4 batches (100%), 7.0 s/batch, elapsed 0:28\n"


def test_early_stop_unknown_total_and_resumed_count_are_reported_as_they_are(monkeypatch, clock) -> None:
    monkeypatch.delenv("SSL_AVER_PROGRESS_INTERVAL", raising=False)
    out = io.StringIO()
    for k in progress_bar(range(10), desc="predict", unit="clip", file=out):
        clock.t += 0.5
        if k == 2:
            break
    with progress_bar(iter(range(3)), desc="decode", file=out) as bar:
        for _ in bar:
            clock.t += 0.25
    with progress_bar(total=100, initial=40, desc="pretrain", unit="step", file=out) as bar:
        clock.t += 60.0
        bar.update(30)  # 60 s > 30 s: a line now; resumed at step 40, the rate counts this run's 30 steps
    assert out.getvalue().splitlines() == [
        "predict: 2/10 clips (20%), 1.3 clip/s, elapsed 0:01",
        "decode: 3 it, 4.0 it/s, elapsed 0:00",
        "pretrain: 70/100 steps (70%), 2.0 s/step, elapsed 1:00, eta 1:00",
    ]  # and no repeat of that line at close


def test_a_pipe_gets_no_carriage_returns(tmp_path) -> None:
    code = "from ssl_aver.progress import tqdm\nfor _ in tqdm(range(50), desc='clips', unit='clip'):\n    pass\n"
    env = {**os.environ, "SSL_AVER_PROGRESS_INTERVAL": "0"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, env=env, cwd=tmp_path, timeout=60, check=True)
    err = run.stderr.decode()
    assert "\r" not in err and err.endswith("\n")
    lines = err.splitlines()
    assert len(lines) == 50 and all(line.startswith("clips: ") for line in lines)
    assert lines[-1].startswith("clips: 50/50 clips (100%), ")


def test_a_terminal_gets_tqdm_itself(monkeypatch) -> None:
    monkeypatch.setenv("SSL_AVER_PROGRESS_INTERVAL", "0")
    tty = FakeTTY()
    bar = progress_bar(range(5), desc="demo corpus", unit="clip", file=tty)
    assert isinstance(bar, tqdm.std.tqdm) and not isinstance(bar, LineProgress)
    assert list(bar) == [0, 1, 2, 3, 4]
    assert "\r" in tty.getvalue() and "5/5" in tty.getvalue()
    disabled = progress_bar(range(3), disable=True, file=io.StringIO())
    assert isinstance(disabled, tqdm.std.tqdm) and list(disabled) == [0, 1, 2]


@pytest.mark.parametrize("value", ["soon", "-1", "nan"])
def test_bad_interval_names_the_variable(monkeypatch, value: str) -> None:
    monkeypatch.setenv("SSL_AVER_PROGRESS_INTERVAL", value)
    with pytest.raises(UserError, match="SSL_AVER_PROGRESS_INTERVAL.*>= 0"):
        progress_bar(range(3), file=io.StringIO())


@pytest.mark.parametrize("tty", [False, True])
def test_commands_turn_off_the_hub_bars_only_when_stderr_is_a_log(monkeypatch, tty: bool) -> None:
    from ssl_aver.command import run_command

    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "unset")  # so that teardown restores the real state
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS")
    monkeypatch.setattr(sys, "stderr", FakeTTY() if tty else io.StringIO())
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    with pytest.raises(SystemExit):
        run_command("landmarks", "ssl_aver.face", "help only", ["--help"])
    assert os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS") == (None if tty else "1")
