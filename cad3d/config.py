"""Dataclass configs to and from plain dicts (what checkpoints and JSON logs store)."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, TypeVar

T = TypeVar("T")


def field_names(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def config_from_dict(cls: type[T], d: Mapping[str, Any], *, strict: bool = False, **overrides: Any) -> T:
    """``cls(**d)`` keeping only ``cls``'s fields (a config saved by another version may carry
    more); ``strict``: unknown keys are a ValueError instead (a config of another model)."""
    names = field_names(cls)
    unknown = sorted(set(d) - names)
    if strict and unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {unknown}")
    values = {k: v for k, v in d.items() if k in names}
    values.update(overrides)
    return cls(**values)
