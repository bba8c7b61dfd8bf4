"""Experiment configs: dataclasses whose fields document themselves.

An experiment's ``Config`` is a plain dataclass. Each field is followed by a string literal, its
documentation (the convention of attribute docstrings, as Sphinx reads them), so the file reads like
a table of hyper-parameters with the paper's defaults::

    @dataclass(frozen=True)
    class Config:
        lr: float = 0.05
        \"\"\"Learning rate of SGD.\"\"\"

``--set key=value`` overrides are parsed by the field's type, and an unknown key or a value
that does not parse is a :class:`~neuroplastic.errors.ConfigError` listing every valid key with
its type.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import textwrap
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin

from neuroplastic.errors import ConfigError


@dataclass(frozen=True)
class FieldSpec:
    """One config key as a user sees it."""

    name: str
    type: Any
    default: Any
    help: str

    @property
    def type_name(self) -> str:
        return type_name(self.type)


def type_name(tp: Any) -> str:
    """A short human-readable spelling of a field type (``int``, ``{relu, tanh}``, ``int,...``)."""
    origin = get_origin(tp)
    if origin is Literal:
        return "{" + ", ".join(str(a) for a in get_args(tp)) + "}"
    if origin is tuple:
        inner = get_args(tp)[0]
        return f"{type_name(inner)},..."
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in get_args(tp))
    if tp is type(None):
        return "none"
    return getattr(tp, "__name__", str(tp))


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass: the string literal right after each field, in the
    class or in the dataclass it extends (a subclass that only changes defaults may restate or
    inherit them)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            docs.update(_own_field_docs(klass))
    return docs


def _own_field_docs(cls: type) -> dict[str, str]:
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # classes defined in a REPL have no source
        return {}
    class_def = ast.parse(source).body[0]
    docs: dict[str, str] = {}
    body = getattr(class_def, "body", [])
    for node, following in zip(body, body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[node.target.id] = inspect.cleandoc(following.value.value)
    return docs


def config_fields(cls: type) -> list[FieldSpec]:
    """The keys of a config dataclass with their resolved types, defaults and docs."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    specs = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        specs.append(FieldSpec(f.name, hints[f.name], default, docs.get(f.name, "")))
    return specs


def describe_keys(cls: type) -> str:
    """One line per key: ``name (type) = default  help``; used in error messages and ``list``."""
    lines = []
    for spec in config_fields(cls):
        first_line = spec.help.splitlines()[0] if spec.help else ""
        lines.append(f"  {spec.name} ({spec.type_name}) = {spec.default!r}  {first_line}".rstrip())
    return "\n".join(lines)


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_value(tp: Any, text: str) -> Any:
    """Parse the text of a ``--set`` value into ``tp``; raises ValueError if it does not fit."""
    origin = get_origin(tp)
    if origin is Literal:
        for choice in get_args(tp):
            if str(choice) == text:
                return choice
        raise ValueError(f"expected one of {type_name(tp)}")
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if type(None) in args and text.lower() in {"none", "null"}:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return parse_value(arg, text)
            except ValueError:
                pass
        raise ValueError(f"expected {type_name(tp)}")
    if origin is tuple:
        inner = get_args(tp)[0]
        stripped = text.strip().strip("[]()")
        if not stripped:
            return ()
        return tuple(parse_value(inner, part.strip()) for part in stripped.split(","))
    if tp is bool:
        lowered = text.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ValueError("expected true or false")
    if tp is int:
        return int(text)
    if tp is float:
        return float(text)
    if tp is str:
        return text
    raise ValueError(f"fields of type {type_name(tp)} cannot be set from the command line")


def apply_overrides(config: Any, assignments: list[str]) -> Any:
    """A copy of ``config`` with ``key=value`` assignments applied, validated all at once."""
    cls = type(config)
    specs = {spec.name: spec for spec in config_fields(cls)}
    changes: dict[str, Any] = {}
    problems: list[str] = []
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        key = key.strip()
        if not sep:
            problems.append(f"'{assignment}' is not of the form key=value")
        elif key not in specs:
            problems.append(f"unknown key '{key}'")
        else:
            try:
                changes[key] = parse_value(specs[key].type, text.strip())
            except ValueError as error:
                problems.append(f"bad value for '{key}': '{text}' ({error})")
    if problems:
        raise ConfigError(
            "; ".join(problems),
            hint=f"use --set key=value with one of these keys:\n{describe_keys(cls)}",
        )
    try:
        return dataclasses.replace(config, **changes)
    except ValueError as error:  # a Config.__post_init__ rejected the combination
        raise ConfigError(str(error), hint="change the --set values") from None


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of the config (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def config_from_dict(cls: type, values: dict[str, Any]) -> Any:
    """Rebuild a config from :func:`config_to_dict` output (lists back to tuples)."""
    specs = {spec.name: spec for spec in config_fields(cls)}
    unknown = sorted(set(values) - set(specs))
    if unknown:
        raise ConfigError(
            f"unknown config keys {unknown} for {cls.__module__}",
            hint=f"valid keys:\n{describe_keys(cls)}",
        )
    converted = {
        key: tuple(value) if get_origin(specs[key].type) is tuple else value
        for key, value in values.items()
    }
    return cls(**converted)


def diff_from_default(config: Any) -> dict[str, Any]:
    """Keys whose values differ from the dataclass defaults: what makes a run special."""
    defaults = config_to_dict(type(config)())
    current = config_to_dict(config)
    return {key: value for key, value in current.items() if defaults.get(key) != value}
