"""--schedule windows and --idle-only's measure of what other programs use."""

from __future__ import annotations

import pytest

from swarm.client.availability import MachineLoad, Schedule


@pytest.mark.parametrize(
    ("window", "inside", "outside"),
    [
        ("09:00-17:30", ["09:00", "12:00", "17:29"], ["08:59", "17:30", "23:00", "00:00"]),
        ("22:00-07:00", ["22:00", "23:59", "00:00", "06:59"], ["07:00", "12:00", "21:59"]),
        ("0:00-1:00", ["00:00", "00:59"], ["01:00", "23:59"]),
    ],
)
def test_a_window_holds_its_minutes_and_may_wrap_midnight(
    window: str, inside: list[str], outside: list[str]
) -> None:
    schedule = Schedule.parse(window)

    def minute(text: str) -> int:
        hours, minutes = text.split(":")
        return int(hours) * 60 + int(minutes)

    assert all(schedule.contains(minute(t)) for t in inside)
    assert not any(schedule.contains(minute(t)) for t in outside)


def test_a_window_prints_as_it_parses() -> None:
    assert str(Schedule.parse("7:05-22:00")) == "07:05-22:00"


@pytest.mark.parametrize(
    "window", ["", "22:00", "24:00-07:00", "22:60-07:00", "9-17", "07:00-07:00"]
)
def test_bad_windows_are_refused_with_an_example(window: str) -> None:
    with pytest.raises(ValueError, match=r"22:00-07:00|empty"):
        Schedule.parse(window)


def test_others_share_excludes_the_clients_own_cpu_time() -> None:
    # (machine busy, machine total) CPU seconds, and this process's CPU seconds, over time.
    machine = iter([(100.0, 400.0), (130.0, 440.0), (170.0, 480.0)])
    own = iter([50.0, 70.0, 72.0])
    load = MachineLoad(machine=lambda: next(machine), own=lambda: next(own))
    assert load.others_share() is None  # nothing to compare with yet
    # 30 s busy of 40, 20 of them ours: others used 10 of 40.
    assert load.others_share() == pytest.approx(0.25)
    # 40 s busy of 40, 2 ours: others 38 of 40 (someone is using the machine).
    assert load.others_share() == pytest.approx(0.95)


def test_an_unreadable_machine_counts_as_unknown() -> None:
    def broken() -> tuple[float, float]:
        raise OSError("no /proc here")

    load = MachineLoad(machine=broken, own=lambda: 0.0)
    assert load.others_share() is None and load.others_share() is None


def test_the_real_machine_can_be_sampled() -> None:
    load = MachineLoad()
    load.others_share()
    sum(i * i for i in range(200_000))  # some CPU time of our own
    share = load.others_share()
    assert share is None or 0.0 <= share <= 1.0
