"""Registries of source, operator and sink types, looked up by the ``type`` key in the config.

A new type is one class plus one registration::

    from market_data.registry import SINKS
    SINKS.register("kafka", KafkaSinkOptions, "mypackage.kafka:build_kafka_sink")

The builder is named as ``"module:attribute"`` and imported only when the dataflow is built, so
validating a config never imports bytewax, redis or websocket code.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict


class Options(BaseModel):
    """Base of every type's options: frozen, compared by value, unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str


@dataclass(frozen=True)
class Kind:
    """One registered type: its options model and where its builder lives."""

    name: str
    options: type[Options]
    target: str

    def builder(self) -> Callable[..., Any]:
        """Import and return the builder."""
        module, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module), attr)


class Registry:
    """Types of one role (source, operator or sink) by name."""

    def __init__(self, role: str) -> None:
        self.role = role
        self._kinds: dict[str, Kind] = {}

    def register(self, name: str, options: type[Options], target: str) -> None:
        """Register ``name``; registering a name twice is an error."""
        if name in self._kinds:
            raise ValueError(f"{self.role} type {name!r} is already registered")
        if ":" not in target:
            raise ValueError(f"builder target must be 'module:attribute'; got {target!r}")
        self._kinds[name] = Kind(name, options, target)

    def get(self, name: str) -> Kind | None:
        """The registered type called ``name``, if any."""
        return self._kinds.get(name)

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        return sorted(self._kinds)


SOURCES = Registry("source")
OPERATORS = Registry("operator")
SINKS = Registry("sink")
