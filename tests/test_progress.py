"""Progress lines for output that is not a terminal: when they are due, what they say."""

from __future__ import annotations

import pytest

from resnets.errors import UsageError
from resnets.training.progress import LogEvery, ProgressLines


@pytest.mark.parametrize(
    ("text", "every"),
    [("50", LogEvery(steps=50)), ("30s", LogEvery(seconds=30.0)), ("2.5s", LogEvery(seconds=2.5)),
     ("0", LogEvery()), ("0s", LogEvery())],
)  # fmt: skip
def test_log_every_reads_steps_or_seconds(text: str, every: LogEvery) -> None:
    assert LogEvery.parse(text) == every


@pytest.mark.parametrize("text", ["", "-1", "ten", "5m", "1.5"])
def test_a_bad_log_every_is_one_line(text: str) -> None:
    with pytest.raises(UsageError) as error:
        LogEvery.parse(text)
    assert "\n" not in str(error.value) and "--log-every" in str(error.value)


def test_a_line_every_n_steps_and_none_after_the_last() -> None:
    written: list[str] = []
    clock = iter(range(100)).__next__  # one second per reading
    lines = ProgressLines(LogEvery(steps=3), written.append, "epoch 2/5", 10, 0, clock)
    for batch in range(1, 11):
        if lines.step(batch, 8):
            lines.write(batch, 0.5)
    assert [line.split(",")[1] for line in written] == [" batch 3/10 (30%)", " batch 6/10 (60%)",
                                                        " batch 9/10 (90%)"]  # fmt: skip
    assert written[0].startswith("epoch 2/5, batch 3/10 (30%), loss 0.5000, ")


def test_a_line_every_t_seconds_counts_from_the_last_line() -> None:
    now = [0.0]
    written: list[str] = []
    every = LogEvery(seconds=30)
    lines = ProgressLines(every, written.append, "epoch 1/1", 100, 40, lambda: now[0])
    due = []
    for batch in range(41, 100):
        now[0] += 10  # ten seconds a step, 10 images each
        if lines.step(batch, 10):
            lines.write(batch, 1.0)
            due.append(batch)
    assert due == list(range(43, 100, 3))  # every third step: 30 s
    # a resumed epoch (started at batch 40) counts its rate and time left from its own steps
    assert written[0] == (
        "epoch 1/1, batch 43/100 (43%), loss 1.0000, 1 images/s, about 570 s left in the epoch"
    )


def test_never_writes_nothing() -> None:
    lines = ProgressLines(LogEvery(), print, "epoch 1/1", 10, 0)
    assert not any(lines.step(batch, 1) for batch in range(1, 11))
