"""Measured values with named coordinates: what a run reports, the store keeps and reports group.

A run's metrics are a mapping from :class:`Key` to a float, its curves a mapping from
:class:`Key` to ``{"x": [...], "y": [...]}``. A key names the method, the metric and any of a
fixed set of coordinates (the training-set size, the cost, a layer, ...)::

    metrics[Key("momentum", "test_accuracy", size=300, cost="ce")] = 0.71
    metrics[Key("fa", "angle", layer="layer0.weight")] = 41.3

so that verdicts and reports select by coordinate (:func:`select`) instead of building strings and
parsing them back. In the store and in JSON a value is one flat record,
``{"method": "momentum", "metric": "test_accuracy", "size": 300, "cost": "ce", "value": 0.71}``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

Coordinate = str | int | float

COORDINATES: tuple[str, ...] = (
    "setting", "size", "cost", "inputs", "width", "outputs", "layer", "epoch",
)  # fmt: skip
"""The coordinates a key may carry, in the order tables show them:

* ``setting``: a variant of the task or model the method runs in (a scenario, a feedback type);
* ``size``: the number of training examples;
* ``cost``: the loss function;
* ``inputs``, ``width``, ``outputs``: a network's input, hidden and output widths, when a study
  varies them;
* ``layer``: a parameter or layer name, for per-layer measurements;
* ``epoch``: when in training the value was measured.
"""

_RECORD_FIELDS = ("method", "metric")
_VALUE_FIELDS = ("value", "x", "y")


class Key:
    """What a value measures: a method, a metric and named coordinates (see ``COORDINATES``).

    Keys are immutable and hashable; two keys are equal when method, metric and every coordinate
    are equal. A coordinate given as None is left out.
    """

    __slots__ = ("_method", "_metric", "_coords")

    def __init__(self, method: str, metric: str, **coords: Coordinate | None) -> None:
        if not isinstance(method, str) or not isinstance(metric, str) or not metric:
            raise TypeError(
                f"a Key needs a method and a metric name as strings, got {method!r}, {metric!r}"
            )
        unknown = sorted(set(coords) - set(COORDINATES))
        if unknown:
            raise ValueError(
                f"unknown coordinate(s) {', '.join(unknown)} for {method}/{metric}; a Key's "
                f"coordinates are {', '.join(COORDINATES)}"
            )
        for name, value in coords.items():
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (str, int, float))
            ):
                raise TypeError(
                    f"coordinate {name} of {method}/{metric} must be a string or a number, "
                    f"got {value!r}"
                )
        object.__setattr__(self, "_method", method)
        object.__setattr__(self, "_metric", metric)
        object.__setattr__(
            self,
            "_coords",
            tuple((n, coords[n]) for n in COORDINATES if coords.get(n) is not None),
        )

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("a Key is immutable; use Key.replace")

    @property
    def method(self) -> str:
        return self._method

    @property
    def metric(self) -> str:
        return self._metric

    @property
    def coords(self) -> dict[str, Coordinate]:
        """The coordinates this key carries, in ``COORDINATES`` order."""
        return dict(self._coords)

    def get(self, name: str, default: Any = None) -> Any:
        """A coordinate's value, or ``default`` if the key does not carry it."""
        return dict(self._coords).get(name, default)

    def replace(self, **changes: Any) -> Key:
        """This key with some fields changed (``method``, ``metric`` or coordinates; None
        removes a coordinate)."""
        fields: dict[str, Any] = {"method": self._method, "metric": self._metric, **self.coords}
        fields.update(changes)
        return Key(**fields)

    def matches(self, **criteria: Any) -> bool:
        """Whether every given field equals this key's (``method``, ``metric`` or a coordinate;
        None asks for a coordinate to be absent)."""
        fields = self.to_dict()
        return all(fields.get(name) == value for name, value in criteria.items())

    def to_dict(self) -> dict[str, Any]:
        return {"method": self._method, "metric": self._metric, **self.coords}

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> Key:
        """The key of a stored record, ignoring its value fields (``value``, ``x``, ``y``)."""
        fields = {k: v for k, v in record.items() if k not in _VALUE_FIELDS}
        missing = [name for name in _RECORD_FIELDS if name not in fields]
        if missing:
            raise ValueError(f"a metric record needs {' and '.join(missing)}: {dict(record)!r}")
        return cls(**fields)

    def describe(self) -> str:
        """The metric and its coordinates for a table cell: ``test_accuracy (size 300)``."""
        if not self._coords:
            return self._metric
        return f"{self._metric} ({', '.join(f'{n} {v}' for n, v in self._coords)})"

    def __str__(self) -> str:
        return f"{self._method}: {self.describe()}" if self._method else self.describe()

    def __repr__(self) -> str:
        coords = "".join(f", {n}={v!r}" for n, v in self._coords)
        return f"Key({self._method!r}, {self._metric!r}{coords})"

    def _identity(self) -> tuple:
        return (self._method, self._metric, self._coords)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Key) and self._identity() == other._identity()

    def __hash__(self) -> int:
        return hash(self._identity())

    def __reduce__(self) -> tuple:
        return (_make_key, (self._method, self._metric, self.coords))


def _make_key(method: str, metric: str, coords: dict[str, Coordinate]) -> Key:
    return Key(method, metric, **coords)


def select(values: Mapping[Key, Any], **criteria: Any) -> dict[Key, Any]:
    """The entries of ``values`` whose keys match ``criteria`` (see :meth:`Key.matches`)."""
    return {key: value for key, value in values.items() if key.matches(**criteria)}


def only(values: Mapping[Key, Any], **criteria: Any) -> Any:
    """The one value whose key matches ``criteria``; KeyError if none or several match."""
    found = select(values, **criteria)
    if len(found) != 1:
        wanted = ", ".join(f"{k}={v!r}" for k, v in criteria.items())
        raise KeyError(f"{len(found)} values match {wanted}, expected exactly one")
    return next(iter(found.values()))


def metrics_to_records(metrics: Mapping[Key, float]) -> list[dict[str, Any]]:
    """``{Key: value}`` as flat records, for the store and JSON."""
    return [{**_checked_key(key).to_dict(), "value": value} for key, value in metrics.items()]


def metrics_from_records(records: Iterable[Mapping[str, Any]]) -> dict[Key, float]:
    return {Key.from_dict(record): record["value"] for record in records}


def curves_to_records(curves: Mapping[Key, Mapping[str, list]]) -> list[dict[str, Any]]:
    """``{Key: {"x": [...], "y": [...]}}`` as flat records, for the store and JSON."""
    return [
        {**_checked_key(key).to_dict(), "x": list(curve["x"]), "y": list(curve["y"])}
        for key, curve in curves.items()
    ]


def curves_from_records(records: Iterable[Mapping[str, Any]]) -> dict[Key, dict[str, list]]:
    return {Key.from_dict(record): {"x": record["x"], "y": record["y"]} for record in records}


def _checked_key(key: object) -> Key:
    if not isinstance(key, Key):
        raise TypeError(
            f"metrics and curves are keyed by neuroplastic.results.Key, got {key!r}; write "
            "Key(method, metric, **coordinates) instead of a string"
        )
    return key
