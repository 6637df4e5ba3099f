"""Load and validate ``pipelines.yaml``.

Pure apart from reading the file. Every problem is collected and reported at once, each as
``<file>: <path.to[0].key>: <what was expected>; got <what was found>``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

import market_data.options  # noqa: F401  (registers the built-in types)
from market_data import ConfigError
from market_data.redact import redact
from market_data.registry import OPERATORS, SINKS, SOURCES, Options, Registry

DEFAULT_PATH = "pipelines.yaml"
ENV_VAR = "PIPELINES_FILE"

_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that refuses a key given twice in one mapping (the last would win)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            try:
                repeated = key in seen
            except TypeError:  # a list or mapping as a key: SafeLoader refuses it just below
                break
            if repeated:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice (lines {seen[key]} and {line})",
                    key_node.start_mark,
                )  # fmt: skip
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HealthSettings(_Strict):
    """Where the sidecar listens and when the flow counts as stalled."""

    host: str = "127.0.0.1"  # 0.0.0.0 exposes the sidecar on every interface
    port: Annotated[int, Field(ge=0, le=65535)] = 9090
    enabled: bool = True
    stall_after_s: Annotated[float, Field(gt=0)] = 30.0
    # /ready: a synced book whose last update was published longer ago than this is stale (a
    # symbol that stopped updating), one published further behind the exchange's event time
    # than max_book_lag_s is lagging (the service is behind). 0 turns a check off.
    max_book_age_s: Annotated[float, Field(ge=0)] = 10.0
    max_book_lag_s: Annotated[float, Field(ge=0)] = 2.0
    # Several processes of one cluster share metrics and readiness through this directory;
    # default: $PROMETHEUS_MULTIPROC_DIR, else a temp directory named after the cluster.
    shared_dir: str | None = None


class LoggingSettings(_Strict):
    """Log level and line format."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"


class GcSettings(_Strict):
    """Garbage-collector tuning, applied once the dataflow is built (see ``flows/gc_tuning.py``)."""

    # gc.collect() then gc.freeze(): what start-up made is never scanned again, which keeps
    # full collections short (they scan every tracked object: some 60,000 from the imports).
    # On by default: without it, full collections of 30-110 ms made p99 latency 0.2-0.3 s at
    # 10,000 updates/s (docs/configuration.md, "Latency and GC").
    freeze: bool = True
    # Allocations between two young-generation collections (None: Python's default, 700).
    gen0_threshold: Annotated[int, Field(gt=0)] | None = 50_000


CpuSet = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]


class ServiceSettings(_Strict):
    """Service-level settings."""

    health: HealthSettings = HealthSettings()
    logging: LoggingSettings = LoggingSettings()
    # CPUs the worker processes run on (os.sched_setaffinity when the flow is built): one set
    # for every process, or a list of sets, process i taking set i (modulo their number).
    cpu_affinity: CpuSet | Annotated[list[CpuSet], Field(min_length=1)] | None = None
    gc: GcSettings = GcSettings()


class _RawPipeline(_Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")]
    source: dict[str, Any]
    operators: Annotated[list[dict[str, Any]], Field(min_length=1)]
    sinks: Annotated[list[dict[str, Any]], Field(min_length=1)]


@dataclass(frozen=True)
class PipelineConfig:
    """One validated pipeline."""

    name: str
    source: Options
    operators: tuple[Options, ...]
    sinks: tuple[Options, ...]

    @property
    def step_prefix(self) -> str:
        """The pipeline name as a snake_case prefix for dataflow step ids."""
        return re.sub(r"[^a-z0-9]+", "_", self.name.lower()).strip("_")


@dataclass(frozen=True)
class AppConfig:
    """The whole validated configuration."""

    path: str
    service: ServiceSettings
    pipelines: tuple[PipelineConfig, ...]


def config_path(environ: dict[str, str] | None = None) -> str:
    """The config file to load: ``$PIPELINES_FILE`` or ``./pipelines.yaml``."""
    env = os.environ if environ is None else environ
    return env.get(ENV_VAR) or DEFAULT_PATH


def load_config(path: str | os.PathLike[str], environ: dict[str, str] | None = None) -> AppConfig:
    """Read, interpolate and validate a config file; raise :class:`ConfigError` with all errors."""
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read the config file: {exc.strerror}") from None
    return parse_config(text, name, environ)


def parse_config(text: str, name: str, environ: dict[str, str] | None = None) -> AppConfig:
    """Validate config ``text`` (named ``name`` in messages)."""
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{name}: invalid YAML{at}: {problem}") from None
    errors: list[str] = []
    env = dict(os.environ) if environ is None else environ
    raw = _interpolate(raw, "", env, errors)
    if not isinstance(raw, dict):
        got = "an empty file" if raw is None else type(raw).__name__
        raise ConfigError(f"{name}: expected a mapping with 'pipelines'; got {got}")
    for key in raw:
        if key not in ("service", "pipelines"):
            errors.append(f"{key}: unknown key; expected one of pipelines, service")
    service = ServiceSettings()
    try:
        service = ServiceSettings.model_validate(raw.get("service") or {})
    except ValidationError as exc:
        errors.extend(_format(exc, "service", ServiceSettings))
    raw_pipes = raw.get("pipelines")
    if not isinstance(raw_pipes, list) or not raw_pipes:
        errors.append(f"pipelines: expected a non-empty list of pipelines; got {raw_pipes!r}")
        raw_pipes = []
    pipelines: list[PipelineConfig] = []
    indices: list[int] = []  # each valid pipeline's position, for error paths
    names: list[str] = []
    for i, item in enumerate(raw_pipes):
        at = f"pipelines[{i}]"
        try:
            raw_pipe = _RawPipeline.model_validate(item)
        except ValidationError as exc:
            errors.extend(_format(exc, at, _RawPipeline))
            _check_parts(item, at, errors)  # all errors at once: the parts' own too
            continue
        names.append(raw_pipe.name)
        source = _resolve(SOURCES, raw_pipe.source, f"{at}.source", errors)
        ops = [
            _resolve(OPERATORS, o, f"{at}.operators[{j}]", errors)
            for j, o in enumerate(raw_pipe.operators)
        ]
        sinks = [
            _resolve(SINKS, s, f"{at}.sinks[{j}]", errors) for j, s in enumerate(raw_pipe.sinks)
        ]
        if source is None or None in ops or None in sinks:
            continue
        pipelines.append(
            PipelineConfig(raw_pipe.name, source, tuple(ops), tuple(sinks))  # type: ignore[arg-type]
        )
        indices.append(i)
    _cross_checks(names, list(zip(indices, pipelines, strict=True)), errors)
    if errors:
        raise ConfigError(_report(name, errors))
    return AppConfig(name, service, tuple(pipelines))


def _resolve(registry: Registry, raw: dict[str, Any], at: str, errors: list[str]) -> Options | None:
    kind_name = raw.get("type")
    known = ", ".join(registry.names())
    if kind_name is None:
        errors.append(f"{at}.type: missing; expected one of {known}")
        return None
    kind = registry.get(kind_name) if isinstance(kind_name, str) else None
    if kind is None:
        errors.append(
            f"{at}.type: unknown {registry.role} type; expected one of {known}; got {kind_name!r}"
        )
        return None
    try:
        return kind.options.model_validate(raw)
    except ValidationError as exc:
        errors.extend(_format(exc, at, kind.options))
        return None


def _check_parts(item: Any, at: str, errors: list[str]) -> None:
    """Report what is wrong inside the parts of a pipeline that is itself invalid."""
    if not isinstance(item, dict):
        return
    if isinstance(item.get("source"), dict):
        _resolve(SOURCES, item["source"], f"{at}.source", errors)
    for key, registry in (("operators", OPERATORS), ("sinks", SINKS)):
        parts = item.get(key)
        for j, part in enumerate(parts if isinstance(parts, list) else ()):
            if isinstance(part, dict):
                _resolve(registry, part, f"{at}.{key}[{j}]", errors)


def _cross_checks(
    names: list[str], pipelines: list[tuple[int, PipelineConfig]], errors: list[str]
) -> None:
    seen_names: set[str] = set()
    for name in names:
        if name in seen_names:
            errors.append(f"pipelines: pipeline names must be unique; got {name!r} twice")
        seen_names.add(name)
    # One book per (source type, symbol): the same symbol twice would publish twice.
    owner: dict[tuple[str, str], str] = {}
    for i, p in pipelines:
        for sym in getattr(p.source, "symbols", None) or ():
            key = (p.source.type, sym)
            if key in owner and owner[key] != p.name:
                errors.append(
                    f"pipelines[{i}].source.symbols: {sym} is also in pipeline "
                    f"{owner[key]!r} with the same source type; got it twice"
                )
            owner.setdefault(key, p.name)
        kinds = [o.type for o in p.operators]
        if kinds.count("orderbook") != 1:
            errors.append(
                f"pipelines[{i}].operators: expected exactly one orderbook operator; got {kinds}"
            )
        # A book never publishes levels it cannot know exactly: more than it keeps, or more
        # than a snapshot gives it, would never be published.
        limit = getattr(p.source, "snapshot_limit", None)
        for j, o in enumerate(p.operators):
            depth = getattr(o, "depth", None)
            if depth is None:
                continue
            max_levels = getattr(o, "max_levels", depth)
            if depth > max_levels:
                errors.append(
                    f"pipelines[{i}].operators[{j}].depth: expected at most max_levels "
                    f"({max_levels}), the levels a side the book keeps; got {depth}"
                )
            if limit is not None and depth > limit:
                errors.append(
                    f"pipelines[{i}].operators[{j}].depth: expected at most the source's "
                    f"snapshot_limit ({limit}), the levels a snapshot gives the book; got {depth}"
                )


def _interpolate(value: Any, at: str, env: dict[str, str], errors: list[str]) -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string value."""
    if isinstance(value, str):
        if "${" not in value:
            return value

        def sub(m: re.Match[str]) -> str:
            var, default = m.group(1), m.group(2)
            value = env.get(var)
            # Like the shell: ${VAR:-default} also replaces an empty value, ${VAR} keeps it.
            if value is not None and (value != "" or default is None):
                return value
            if default is not None:
                return default
            errors.append(
                f"{at or '<root>'}: environment variable {var} is not set and has no default"
            )
            return m.group(0)

        return _INTERPOLATION.sub(sub, value)
    if isinstance(value, dict):
        return {k: _interpolate(v, _join(at, k), env, errors) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, f"{at}[{i}]", env, errors) for i, v in enumerate(value)]
    return value


def _join(at: str, key: Any) -> str:
    return f"{at}.{key}" if at else str(key)


def _loc(base: str, loc: tuple[int | str, ...]) -> str:
    out = base
    for part in loc:
        out = f"{out}[{part}]" if isinstance(part, int) else _join(out, part)
    return out or "<root>"


_MESSAGES: dict[str, Callable[[dict[str, Any]], str]] = {
    "missing": lambda e: "missing required key",
    "extra_forbidden": lambda e: "unknown key",
}


def _format(exc: ValidationError, base: str, model: type[BaseModel] | None = None) -> Iterator[str]:
    for err in exc.errors(include_url=False):
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        # Union members show up as loc parts named after the member type; drop them.
        loc = tuple(p for p in loc if p not in ("str", "list[str]", "enum", "literal[...]"))
        where = _loc(base, loc)
        kind = err["type"]
        if kind == "extra_forbidden":
            fields = _fields_at(model, loc[:-1]) if model else None
            hint = f"; expected one of {', '.join(fields)}" if fields else ""
            yield f"{where}: unknown key{hint}"
            continue
        if kind == "missing":
            yield f"{where}: missing required key"
            continue
        msg = err["msg"].removeprefix("Value error, ")
        yield f"{where}: {msg[:1].lower()}{msg[1:]}; got {err['input']!r}"


def _fields_at(model: type[BaseModel] | None, loc: tuple[int | str, ...]) -> list[str] | None:
    if model is None or loc:
        return None
    return sorted(model.model_fields)


def _report(name: str, errors: list[str]) -> str:
    # A key whose ${VAR} could not be resolved is reported once, for the variable, not again for
    # the unresolved text failing its own check. Each line once, in order.
    unresolved = {e.split(": ", 1)[0] for e in errors if ": environment variable " in e}
    unique = [
        e
        for e in dict.fromkeys(errors)
        if ": environment variable " in e or e.split(": ", 1)[0] not in unresolved
    ]
    noun = "error" if len(unique) == 1 else "errors"
    lines = "\n".join(f"  {name}: {redact(e)}" for e in unique)  # values may hold passwords
    return f"{name}: {len(unique)} configuration {noun}:\n{lines}"
