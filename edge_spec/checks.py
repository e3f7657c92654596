"""Checks of user-given option values: the right type and range, or a ConfigError that names the option
as the API spells it and as the command line does (`max_tokens (--max-tokens)`).

Booleans are not numbers here (Python counts True as 1; a user who writes max_tokens=True made a mistake).
"""

from __future__ import annotations

import math
from numbers import Integral, Real

from edge_spec.errors import ConfigError


def named(option: str) -> str:
    """`tau_t` -> "tau_t (--tau-t)"."""
    return f"{option} (--{option.replace('_', '-')})"


def integer(option: str, value: object, least: int | None = None, most: int | None = None) -> int:
    """`value` as an int: an integer (not a bool) in [`least`, `most`]."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ConfigError(f"{named(option)} must be an integer, got {value!r}")
    if least is not None and value < least:
        raise ConfigError(f"{named(option)} must be at least {least}, got {value}")
    if most is not None and value > most:
        raise ConfigError(f"{named(option)} must be at most {most}, got {value}")
    return int(value)


def number(option: str, value: object, least: float | None = None) -> float:
    """`value` as a float: a finite real number (not a bool) >= `least`."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ConfigError(f"{named(option)} must be a number, got {value!r}")
    try:
        result = float(value)
    except OverflowError:  # an int too large for a float
        result = math.inf
    if not math.isfinite(result) or (least is not None and result < least):
        floor = "" if least is None else f" >= {least:g}"
        raise ConfigError(f"{named(option)} must be a finite number{floor}, got {value}")
    return result


def optional_integer(option: str, value: object, least: int | None = None) -> int | None:
    """None, or `value` as `integer` checks it."""
    return None if value is None else integer(option, value, least)


def text(option: str, value: object) -> str:
    """`value`, which must be a string."""
    if not isinstance(value, str):
        raise ConfigError(f"{named(option)} must be a string, got {value!r}")
    return value


def flag(option: str, value: object, optional: bool = False) -> bool | None:
    """`value`, which must be True or False (or None when `optional`)."""
    if not (isinstance(value, bool) or (optional and value is None)):
        allowed = "true, false or none" if optional else "true or false"
        raise ConfigError(f"{named(option)} must be {allowed}, got {value!r}")
    return value


def stage_count(draft: object, qualifier: object) -> int:
    """Verification stages of a pyramid with these tiers (None = absent); a qualifier needs a draft."""
    if qualifier is not None and draft is None:
        raise ConfigError("a qualifier needs a draft below it (--draft PATH or --draft ngram)")
    return max((draft is not None) + (qualifier is not None), 1)
