"""Config dataclasses: field docs, --set parsing and validation."""

from dataclasses import dataclass
from typing import Literal

import pytest

from neuroplastic.config import (
    apply_overrides,
    config_fields,
    config_from_dict,
    config_to_dict,
    diff_from_default,
    parse_value,
)
from neuroplastic.errors import ConfigError
from neuroplastic.experiments import EXPERIMENTS, get_experiment


@dataclass(frozen=True)
class Example:
    width: int = 30
    """Hidden units."""
    lr: float = 0.1
    """Learning rate,
    over two lines."""
    shuffle: bool = True
    activation: Literal["relu", "tanh"] = "relu"
    """Non-linearity."""
    hidden: tuple[int, ...] = (500, 500)
    """Hidden widths."""
    name: str = "x"
    """A string."""
    limit: float | None = None
    """Optional cap."""

    def __post_init__(self):
        if self.width < 1:
            raise ValueError("width must be at least 1")


def test_field_docs_are_read_from_attribute_docstrings():
    docs = {spec.name: spec.help for spec in config_fields(Example)}
    assert docs["width"] == "Hidden units."
    assert docs["lr"] == "Learning rate,\nover two lines."
    assert docs["shuffle"] == ""  # no docstring follows it


@pytest.mark.parametrize(
    ("assignment", "key", "expected"),
    [
        ("width=64", "width", 64),
        ("lr=3e-4", "lr", 3e-4),
        ("shuffle=false", "shuffle", False),
        ("shuffle=1", "shuffle", True),
        ("activation=tanh", "activation", "tanh"),
        ("hidden=100,200,300", "hidden", (100, 200, 300)),
        ("hidden=[7]", "hidden", (7,)),
        ("name=a=b", "name", "a=b"),
        ("limit=none", "limit", None),
        ("limit=2.5", "limit", 2.5),
    ],
)
def test_overrides_parse_by_field_type(assignment, key, expected):
    assert getattr(apply_overrides(Example(), [assignment]), key) == expected


@pytest.mark.parametrize(
    ("assignment", "fragment"),
    [
        ("depth=3", "unknown key 'depth'"),
        ("width=3.5", "bad value for 'width'"),
        ("shuffle=maybe", "bad value for 'shuffle'"),
        ("activation=gelu", "bad value for 'activation'"),
        ("width", "not of the form key=value"),
        ("width=0", "width must be at least 1"),
    ],
)
def test_bad_overrides_name_the_problem_and_list_the_keys(assignment, fragment):
    with pytest.raises(ConfigError) as caught:
        apply_overrides(Example(), [assignment])
    message = str(caught.value)
    assert fragment in message
    if "unknown" in fragment or "bad value" in fragment:
        assert "width (int) = 30" in message
        assert "activation ({relu, tanh})" in message


def test_all_problems_are_reported_at_once():
    with pytest.raises(ConfigError) as caught:
        apply_overrides(Example(), ["depth=1", "lr=fast"])
    assert "unknown key 'depth'" in str(caught.value)
    assert "bad value for 'lr'" in str(caught.value)


def test_dict_round_trip_restores_tuples():
    config = apply_overrides(Example(), ["hidden=3,4", "lr=0.5"])
    assert config_from_dict(Example, config_to_dict(config)) == config
    assert diff_from_default(config) == {"hidden": [3, 4], "lr": 0.5}


def test_config_from_dict_rejects_unknown_keys():
    with pytest.raises(ConfigError, match="unknown config keys"):
        config_from_dict(Example, {"width": 3, "colour": "red"})


def test_parse_value_rejects_unsupported_types():
    with pytest.raises(ValueError):
        parse_value(dict, "{}")


def test_unknown_experiment_lists_the_registered_ones():
    with pytest.raises(ConfigError) as caught:
        get_experiment("mnist-backprob")
    assert "mnist-backprop" in str(caught.value)


@pytest.mark.parametrize("experiment", EXPERIMENTS.values(), ids=list(EXPERIMENTS))
def test_every_experiment_config_is_documented(experiment):
    """Every key of every registered experiment has a docstring and a dataset key."""
    specs = config_fields(experiment.config_cls)
    assert "dataset" in {spec.name for spec in specs}
    undocumented = [spec.name for spec in specs if not spec.help]
    assert undocumented == []
    quick = experiment.quick(experiment.config_cls())
    assert quick.dataset == experiment.config_cls().dataset  # --quick never changes the data
