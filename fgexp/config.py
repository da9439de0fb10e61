"""Config dataclasses from command-line strings: the one converter behind every `--set`."""
from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping


def coerce(config, overrides: Mapping[str, object]):
    """dataclasses.replace(config, ...) with string values read as each field's type.

    Tuples take comma lists ("0,1,2"), "none" gives None where the field allows it, booleans
    take true/false/1/0/yes/no. Raises ValueError naming the field for an unknown field or a
    value of the wrong type.
    """
    hints = typing.get_type_hints(type(config))
    fields = [f.name for f in dataclasses.fields(config)]
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ValueError(f"unknown option {', '.join(unknown)}; allowed: {', '.join(fields)}")
    values = {}
    for key, value in overrides.items():
        try:
            values[key] = convert(value, hints[key])
        except ValueError:
            raise ValueError(f"option {key}: cannot read {value!r} as {_name(hints[key])}") \
                from None
    return dataclasses.replace(config, **values)


def convert(value, hint):
    """One string -> the type `hint` (int, float, str, bool, X | None, tuple[X, ...])."""
    if not isinstance(value, str):
        return value
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    optional = type(None) in typing.get_args(hint)
    if optional and value.strip().lower() == "none":
        return None
    origin = typing.get_origin(hint)
    if origin is tuple:
        item = typing.get_args(hint)[0]
        return tuple(convert(v.strip(), item) for v in value.split(",") if v.strip())
    if optional and len(args) == 1:
        return convert(value, args[0])
    if hint is bool:
        text = value.strip().lower()
        if text not in ("1", "0", "true", "false", "yes", "no"):
            raise ValueError(value)
        return text in ("1", "true", "yes")
    if hint in (int, float):
        return hint(value)
    if hint is str:
        return value
    if len(args) > 1:  # e.g. int | str: the first type that reads it
        for arg in args:
            try:
                return convert(value, arg)
            except ValueError:
                continue
    raise ValueError(value)


def _name(hint) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def grid_fields(overrides: Mapping[str, object], grid: tuple[str, ...], cone: bool) -> dict:
    """Overrides of a config with a normal grid and a cone grid (fields `cone_<name>`).

    With cone, the names in `grid` set the cone grid's fields; without it, the normal grid's
    ("angles" exists only as cone_angles). Other names keep theirs. ValueError for angles
    without cone.
    """
    if "angles" in overrides and not cone:
        raise ValueError("--angles applies only with --cone")
    return {f"cone_{name}" if cone and name in grid else name: value
            for name, value in overrides.items()}
