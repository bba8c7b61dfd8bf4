"""Which recorded runs a verdict reads: ``experiments.base.default_runs``."""

from dataclasses import dataclass
from typing import ClassVar

from neuroplastic.experiments.base import default_runs
from neuroplastic.testing import recorded_run


@dataclass(frozen=True)
class Before:
    dataset: str = "none"
    rate: float = 0.1


@dataclass(frozen=True)
class After:
    """``Before`` with two options added later: ``cap``'s default keeps the old behaviour
    (declared), ``width``'s does not."""

    OPTIONS_ADDED_LATER: ClassVar[tuple[str, ...]] = ("cap",)
    dataset: str = "none"
    rate: float = 0.1
    cap: float = 0.0
    width: int = 8


OLD = {"dataset": "none", "rate": 0.1}


def test_a_run_that_lacks_only_declared_later_options_is_a_default_run():
    old = recorded_run("demo", {**OLD, "width": 8}, 0, {}, id=1)
    new = recorded_run("demo", After(), 1, {}, id=2)
    assert old.config_hash != new.config_hash
    assert [r.id for r in default_runs([old, new], After)] == [1, 2]


def test_a_run_that_lacks_an_undeclared_option_is_not():
    old = recorded_run("demo", Before(), 0, {}, id=1)  # lacks width too
    assert default_runs([old], After) == []


def test_other_values_quick_and_unfinished_runs_are_not_default_runs():
    records = [
        recorded_run("demo", {**OLD, "rate": 0.2, "width": 8}, 0, {}, id=1),  # another value
        recorded_run("demo", After(cap=0.01), 0, {}, id=2),  # the new option set
        recorded_run("demo", {**OLD, "width": 8, "gone": 1}, 0, {}, id=3),  # a field removed
        recorded_run("demo", After(), 0, {}, id=4, quick=True),
        recorded_run("demo", After(), 0, {}, id=5, status="interrupted"),
        recorded_run("demo", After(), 0, {}, id=6),
    ]
    assert [r.id for r in default_runs(records, After)] == [6]


@dataclass(frozen=True)
class Executed:
    """A config with an execution option: ``backend`` picks how, not what."""

    EXECUTION_OPTIONS: ClassVar[tuple[str, ...]] = ("backend",)
    dataset: str = "none"
    rate: float = 0.1
    backend: str = "reference"


def test_runs_that_differ_only_in_an_execution_option_are_default_runs():
    records = [
        recorded_run("demo", Executed(), 0, {}, id=1),
        recorded_run("demo", Executed(backend="compiled"), 1, {}, id=2),
        recorded_run("demo", Executed(rate=0.2, backend="compiled"), 2, {}, id=3),
    ]
    assert [r.id for r in default_runs(records, Executed)] == [1, 2]
    assert [r.id for r in default_runs(records[1:], After)] == []  # not declared there
