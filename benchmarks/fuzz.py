"""Fuzz the service's input edges with generated inputs; count and report every rejection.

    python -m benchmarks.fuzz --inputs 100000            # each target gets 100,000 inputs
    python -m benchmarks.fuzz --inputs 20000 --target config --seed 7 --save /tmp/crashes

Targets, each fed inputs mutated from a corpus of real, valid ones:

* ``frame``     :func:`sources.parse.parse_frame` on WebSocket frames (the recorded captures);
* ``snapshot``  :func:`sources.parse.parse_snapshot` on REST depth bodies (the captures);
* ``config``    :func:`market_data.config.parse_config` on ``pipelines*.yaml`` texts;
* ``shm``       :class:`sinks.shm_format.RingReader` on segment images a real writer made
  (one input in 16 through a real POSIX segment and :class:`sinks.shm.ShmReader`);
* ``recording`` :func:`sources.recording.decode_record` on recording lines.

Mutations are byte-level (flips, deletions, insertions, truncation, splices of two inputs,
noise) and structure-aware (for JSON: values replaced by other types, huge or negative numbers,
keys removed or renamed, deep nesting; for YAML: lines removed, duplicated, re-indented, scalars
replaced, environment references; for rings: header fields and slot words set to edge values).

A *crash* is any exception other than the target's documented rejection, or an input taking
more than ``--timeout-s``; it is printed with its input and saved with ``--save``. Every other
input is either accepted or rejected with a reason; rejections are reported grouped by reason
(digits and quoted excerpts folded). Exit status 1 if anything crashed.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import orjson

from market_data import ConfigError
from market_data.config import AppConfig, parse_config
from market_data.events import DepthDelta, DepthSnapshot, FrameError, Ignored, Trade
from sinks.shm_format import Layout, RecordType, RingReader, RingWriter, ShmError, init_header
from sources.parse import parse_frame, parse_snapshot
from sources.recording import decode_record, encode_record, read_records

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
ENV = {"REDIS_URL": "redis://:s3cret@127.0.0.1:6379/0", "SIM_WS_URL": "ws://127.0.0.1:1"}

Outcome = tuple[bool, str]  # (accepted, reason or kind)


class Hang(Exception):
    """An input ran past the time limit."""


class Invalid(Exception):
    """An accepted result broke an invariant (a finding, like a crash)."""


# -- targets ---------------------------------------------------------------------------------------


def run_frame(data: bytes) -> Outcome:
    frame: str | bytes = data if data[:1] != b"~" else data[1:].decode("utf-8", "replace")
    ev = parse_frame(frame, 1.0, 1)
    if isinstance(ev, FrameError):
        if not ev.reason:
            raise Invalid("a FrameError without a reason")
        return False, ev.reason
    if isinstance(ev, DepthDelta):
        _check_levels(ev.bids + ev.asks)
        if not all(isinstance(i, int) for i in (ev.first_update_id, ev.final_update_id)):
            raise Invalid(f"non-integer update ids in {ev!r}")
        return True, "depthUpdate"
    if isinstance(ev, Trade):
        if not (isinstance(ev.price, int) and isinstance(ev.quantity, int)):
            raise Invalid(f"non-integer price or quantity in {ev!r}")
        return True, "aggTrade"
    if isinstance(ev, Ignored):
        return True, "ignored"
    raise Invalid(f"parse_frame returned {type(ev).__name__}")


def run_snapshot(data: bytes) -> Outcome:
    ev = parse_snapshot("BTCUSDT", data, 1.0, 1)
    if isinstance(ev, FrameError):
        if not ev.reason:
            raise Invalid("a FrameError without a reason")
        return False, ev.reason
    if not isinstance(ev, DepthSnapshot) or not isinstance(ev.last_update_id, int):
        raise Invalid(f"parse_snapshot returned {ev!r}")
    _check_levels(ev.bids + ev.asks)
    return True, "snapshot"


def _check_levels(levels: tuple[tuple[int, int], ...]) -> None:
    for level in levels:
        price, qty = level
        if type(price) is not int or type(qty) is not int or price < 0 or qty < 0:
            raise Invalid(f"level {level!r} is not a pair of non-negative integer units")


def run_config(data: bytes) -> Outcome:
    text = data.decode("utf-8", "replace")
    try:
        config = parse_config(text, "fuzz.yaml", ENV)
    except ConfigError as exc:
        message = str(exc)
        if "s3cret" in message:
            raise Invalid("a configuration error shows the password from $REDIS_URL") from None
        lines = message.splitlines()
        # "<file>: N configuration errors:" then one "  <file>: <path>: <problem>" per line;
        # a YAML syntax error is one message over several lines.
        first = lines[1] if lines[0].endswith(("errors:", "error:")) else lines[0]
        return False, first.split(": ", 2)[-1] if first.count(": ") >= 2 else first
    if not isinstance(config, AppConfig) or not config.pipelines:
        raise Invalid(f"parse_config returned {config!r}")
    return True, "config"


def run_shm(data: bytes) -> Outcome:
    buf = bytearray(data)
    try:
        reader = RingReader(memoryview(buf), start=("first", "oldest", "next")[len(data) % 3])
    except ShmError as exc:
        return False, f"header: {exc}"
    return _drain(reader)


def _drain(reader: Any) -> Outcome:
    records = 0
    for _ in range(4):
        try:
            got = reader.read(10_000)
        except ShmError as exc:  # the magic was overwritten: documented
            return False, f"read: {exc}"
        for record in got:
            records += 1
            try:
                record.data()
            except ShmError:
                pass  # documented for a payload that is not JSON
            if not isinstance(record.kind, RecordType) or not record.symbol.isascii():
                raise Invalid(f"record {record!r} is not well formed")
        if not got:
            break
    if reader.errors:
        return False, f"slot: {reader.last_error.split(': ', 1)[-1]}"
    return True, "records" if records else "empty"


def run_shm_segment(data: bytes) -> Outcome:
    """The same through a real segment: ``ShmReader`` maps it read-only, as readers do."""
    from sinks import shm

    name = f"fuzz_{os.getpid()}"
    fd = os.open(f"/dev/shm/{name}", os.O_CREAT | os.O_RDWR | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    try:
        try:
            reader = shm.ShmReader(name, start="first")
        except ShmError as exc:
            return False, f"open: {exc}"
        with reader:
            reader.writer_gone()
            return _drain(reader)
    finally:
        os.unlink(f"/dev/shm/{name}")


def run_recording(data: bytes) -> Outcome:
    from market_data import ParseError

    try:
        rec = decode_record(data)
    except ParseError as exc:
        return False, str(exc)
    if rec.kind not in ("ws", "rest"):
        raise Invalid(f"decode_record returned kind {rec.kind!r}")
    return True, rec.kind


# -- corpora ---------------------------------------------------------------------------------------


def _captures() -> tuple[list[bytes], list[bytes], list[bytes]]:
    frames: list[bytes] = []
    bodies: list[bytes] = []
    lines: list[bytes] = []
    for name in ("binance_futures_2021-07-22.jsonl.gz", "binance_spot_2021-10-12.jsonl.gz"):
        for i, rec in enumerate(read_records(DATA / name)):
            if isinstance(rec, Exception):
                continue
            if rec.kind == "rest":
                bodies.append(rec.body.encode())
            elif i % 7 == 0:
                frames.append(rec.frame.encode())
            if i % 11 == 0:
                lines.append(encode_record(rec).rstrip(b"\n"))
    return frames[:400], bodies, lines[:200]


def _configs() -> list[bytes]:
    texts = [p.read_bytes() for p in sorted(ROOT.glob("pipelines*.yaml"))]
    texts.append(
        b"service: {health: {host: 127.0.0.1, port: 9091}, logging: {format: json}}\n"
        b"pipelines:\n  - name: p\n    source: {type: binance_spot, symbols: [BTCUSDT]}\n"
        b"    operators: [{type: orderbook, depth: 5, max_levels: 100}]\n"
        b'    sinks: [{type: redis, url: "${REDIS_URL}", mode: both}, {type: stdout}]\n'
    )
    return texts


def _rings() -> list[bytes]:
    out = []
    for slots, slot_size, n in ((4, 128, 3), (8, 128, 21), (2, 64, 0), (16, 256, 16)):
        layout = Layout(slots, slot_size)
        buf = bytearray(layout.total_size)
        view = memoryview(buf)
        init_header(view, layout, writer_pid=1, worker_index=0, worker_count=1)
        writer = RingWriter(view, layout)
        for i in range(n):
            kind = (RecordType.BOOK, RecordType.TRADE, RecordType.STATUS)[i % 3]
            payload = orjson.dumps({"symbol": "BTCUSDT", "i": i})[: layout.max_payload]
            writer.write(kind, "BTCUSDT", payload)
        writer.release()
        view.release()
        out.append(bytes(buf))
    return out


# -- mutations -------------------------------------------------------------------------------------

_INTERESTING_INTS = [0, 1, -1, 2**31 - 1, 2**31, 2**32, 2**63 - 1, 2**63, 2**64, -(2**63)]
_JSON_VALUES: list[Any] = [
    None, True, False, 0, -1, 1.5, 1e308, -1e-308, 2**64, -(2**63), "", "x", "0", "-1", "1e3",
    "0.123456789", "7.6110", "NaN", "9" * 40, "9" * 5000, [], {}, [[]], [["1", "2", "3"]],
    [["1"]], [[1, 2]], [["-1", "1"]], {"a": 1},
]  # fmt: skip
_YAML_SCALARS = [
    "-1", "0", "null", "~", "[]", "{}", "[a, b]", "{x: 1}", '"${UNSET}"', "${UNSET:-}",
    '"${REDIS_URL}"', "redis://:pw@h:1", "http://x", "yes", "1e309", "0x10", "!!binary aGk=",
    "&a [1]", "*a", "'''", '"\\x00"', "9" * 30, "BTCUSDT", "-", "? x", "|\n  a",
]  # fmt: skip


class Mutator:
    """Makes new inputs from a corpus; deterministic for a seed."""

    def __init__(self, rng: random.Random, corpus: list[bytes], kind: str) -> None:
        self.rng = rng
        self.corpus = corpus
        self.kind = kind

    def __call__(self) -> bytes:
        rng = self.rng
        data = rng.choice(self.corpus)
        for _ in range(rng.choice((1, 1, 1, 2, 3, 6))):
            data = self._once(data)
        return data

    def _once(self, data: bytes) -> bytes:
        rng = self.rng
        choice = rng.random()
        if choice < 0.45:
            structured = {"json": self._json, "yaml": self._yaml, "ring": self._ring}[self.kind]
            out = structured(data)
            if out is not None:
                return out
        return self._bytes(data)

    def _bytes(self, data: bytes) -> bytes:
        rng = self.rng
        n = len(data)
        op = rng.randrange(8)
        i = rng.randrange(n + 1) if n else 0
        if op == 0 and n:  # flip bits
            b = bytearray(data)
            for _ in range(rng.randint(1, 4)):
                b[rng.randrange(n)] ^= 1 << rng.randrange(8)
            return bytes(b)
        if op == 1:  # truncate
            return data[:i]
        if op == 2 and n:  # delete a run
            return data[:i] + data[i + rng.randint(1, 16) :]
        if op == 3:  # insert bytes
            junk = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
            return (
                data[:i]
                + rng.choice([junk, b"\x00", b"\xff\xfe", b'"', b"{", b"]", b"\n"])
                + (data[i:])
            )
        if op == 4:  # splice with another corpus entry
            other = rng.choice(self.corpus)
            return data[:i] + other[rng.randrange(len(other) + 1) :]
        if op == 5 and n:  # duplicate a run
            j = min(n, i + rng.randint(1, 64))
            return data[:j] + data[i:j] * rng.randint(1, 50) + data[j:]
        if op == 6:  # pure noise
            return bytes(rng.randrange(256) for _ in range(rng.randint(0, 64)))
        if n:  # overwrite with an ASCII digit run (number edge cases)
            return data[:i] + b"9" * rng.randint(1, 30) + data[i + 1 :]
        return data

    def _json(self, data: bytes) -> bytes | None:
        rng = self.rng
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            return None
        target = obj.get("data", obj) if isinstance(obj, dict) else obj
        if isinstance(target, dict) and target:
            key = rng.choice(list(target))
            op = rng.randrange(6)
            if op == 0:
                del target[key]
            elif op == 1:
                target[key] = rng.choice(_JSON_VALUES)
            elif op == 2:
                target[key] = rng.choice(_INTERESTING_INTS)
            elif op == 3 and isinstance(target[key], list) and target[key]:
                levels = target[key]
                k = rng.randrange(len(levels))
                levels[k] = rng.choice(_JSON_VALUES)
            elif op == 4:
                target[rng.choice(["e", "s", "U", "u", "pu", "b", "a", "E", "lastUpdateId"])] = (
                    rng.choice(_JSON_VALUES + _INTERESTING_INTS)
                )
            else:
                nested: Any = target[key]
                for _ in range(rng.randint(1, 200)):
                    nested = [nested]
                target[key] = nested
        elif rng.random() < 0.5:
            obj = rng.choice(_JSON_VALUES)
        try:
            out = orjson.dumps(obj)
        except orjson.JSONEncodeError:  # e.g. integers beyond 64 bits
            out = str(obj).encode()
        return b"~" + out if self.rng.random() < 0.2 else out

    def _yaml(self, data: bytes) -> bytes | None:
        rng = self.rng
        lines = data.split(b"\n")
        if not lines:
            return None
        i = rng.randrange(len(lines))
        op = rng.randrange(6)
        if op == 0:
            del lines[i]
        elif op == 1:
            lines.insert(i, lines[i])
        elif op == 2:
            lines[i] = b" " * rng.randint(0, 8) + lines[i].lstrip()
        elif op == 3:  # replace a scalar after a colon
            line = lines[i]
            m = list(re.finditer(rb":\s*([^,{}\[\]\n]+)", line))
            if not m:
                return None
            hit = rng.choice(m)
            lines[i] = (
                line[: hit.start(1)] + rng.choice(_YAML_SCALARS).encode() + line[hit.end(1) :]
            )
        elif op == 4:  # an unknown key or a removed required one
            lines.insert(i, lines[i][: len(lines[i]) - len(lines[i].lstrip())] + b"unknown: 1")
        else:
            j = rng.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
        return b"\n".join(lines)

    def _ring(self, data: bytes) -> bytes | None:
        rng = self.rng
        b = bytearray(data)
        if len(b) <= 128:
            return None
        # header fields (4-byte words at 8..60), write_seq (8 bytes at 64), or a slot word
        op = rng.randrange(4)
        value = rng.choice([*_INTERESTING_INTS, rng.randrange(1 << 16)])
        if op == 0:
            off = 8 + 4 * rng.randrange(13)
            b[off : off + 4] = (value & 0xFFFFFFFF).to_bytes(4, "little")
        elif op == 1:
            b[64:72] = (value & (2**64 - 1)).to_bytes(8, "little")
        elif op == 2 and len(b) >= 144:
            off = 128 + 8 * rng.randrange((len(b) - 136) // 8)
            b[off : off + 8] = (value & (2**64 - 1)).to_bytes(8, "little")
        else:
            off = rng.randrange(128, len(b))
            b[off] = rng.randrange(256)
        return bytes(b)


# -- the loop --------------------------------------------------------------------------------------


@dataclass
class TargetReport:
    """What one target did with its inputs."""

    name: str
    inputs: int = 0
    accepted: int = 0
    rejected: int = 0
    crashes: int = 0
    seconds: float = 0.0
    slowest_s: float = 0.0
    accepted_kinds: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    crash_examples: list[tuple[bytes, str]] = field(default_factory=list)


def fold(reason: str) -> str:
    """A reason with its variable parts folded, to group rejections."""
    reason = re.sub(r"'[^']{0,300}'|\"[^\"]{0,300}\"", "'…'", reason)
    reason = re.sub(r"\d+", "N", reason)
    reason = re.sub(r"\bN(\.N)+\b", "N", reason)
    return reason[:90]


@dataclass(frozen=True)
class Target:
    """A function under fuzz, its corpus and its mutation flavour."""

    name: str
    run: Callable[[bytes], Outcome]
    corpus: Callable[[], list[bytes]]
    kind: str


def targets() -> dict[str, Target]:
    """Every target by name (corpora are loaded on demand)."""
    captures: list[tuple[list[bytes], list[bytes], list[bytes]]] = []

    def capture(i: int) -> list[bytes]:
        if not captures:
            captures.append(_captures())
        return captures[0][i]

    return {
        "frame": Target("frame", run_frame, lambda: capture(0), "json"),
        "snapshot": Target("snapshot", run_snapshot, lambda: capture(1), "json"),
        "config": Target("config", run_config, _configs, "yaml"),
        "shm": Target("shm", run_shm, _rings, "ring"),
        "recording": Target("recording", run_recording, lambda: capture(2), "json"),
    }


def _alarm(signum: int, frame: FrameType | None) -> None:
    raise Hang


def fuzz(
    target: Target, inputs: int, seed: int = 0, timeout_s: float = 2.0, max_examples: int = 5
) -> TargetReport:
    """Run ``inputs`` generated inputs through ``target``."""
    rng = random.Random(f"{seed}:{target.name}")
    corpus = target.corpus()
    mutate = Mutator(rng, corpus, target.kind)
    report = TargetReport(target.name)
    timed = hasattr(signal, "setitimer")
    if timed:
        previous = signal.signal(signal.SIGALRM, _alarm)
    started = time.perf_counter()
    try:
        for n in range(inputs):
            data = corpus[n] if n < len(corpus) else mutate()
            run = target.run
            if target.name == "shm" and n % 16 == 15:
                run = run_shm_segment
            t0 = time.perf_counter()
            try:
                if timed:
                    signal.setitimer(signal.ITIMER_REAL, timeout_s)
                try:
                    accepted, what = run(data)
                finally:
                    if timed:
                        signal.setitimer(signal.ITIMER_REAL, 0)
            except Exception as exc:  # the finding this tool exists for
                report.crashes += 1
                if len(report.crash_examples) < max_examples:
                    what = "".join(traceback.format_exception_only(type(exc), exc)).strip()
                    if isinstance(exc, Hang):
                        what = f"no answer within {timeout_s} s"
                    elif not isinstance(exc, Invalid):
                        what = traceback.format_exc(limit=-3)
                    report.crash_examples.append((data, what))
                continue
            finally:
                report.inputs += 1
                report.slowest_s = max(report.slowest_s, time.perf_counter() - t0)
            if accepted:
                report.accepted += 1
                report.accepted_kinds[what] += 1
            else:
                report.rejected += 1
                report.reasons[fold(what)] += 1
    finally:
        if timed:
            signal.signal(signal.SIGALRM, previous)
    report.seconds = time.perf_counter() - started
    return report


def format_report(r: TargetReport, top: int = 12) -> str:
    """One target's figures as text."""
    rate = r.inputs / r.seconds if r.seconds else 0.0
    lines = [
        f"{r.name}: {r.inputs} inputs in {r.seconds:.1f} s ({rate:,.0f}/s), slowest "
        f"{r.slowest_s * 1e3:.1f} ms: accepted {r.accepted} "
        f"({', '.join(f'{k} {v}' for k, v in r.accepted_kinds.most_common())}), "
        f"rejected {r.rejected}, crashes {r.crashes}",
    ]
    for reason, n in r.reasons.most_common(top):
        lines.append(f"  {n:8d}  {reason}")
    if len(r.reasons) > top:
        rest = sum(n for _, n in r.reasons.most_common()[top:])
        lines.append(f"  {rest:8d}  ... {len(r.reasons) - top} more reasons")
    for data, what in r.crash_examples:
        lines.append(f"  CRASH on {data[:200]!r}{'...' if len(data) > 200 else ''}:")
        lines.extend(f"    {line}" for line in what.splitlines())
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Fuzz the chosen targets; print the figures; exit 1 if any input crashed."""
    all_targets = targets()
    p = argparse.ArgumentParser(prog="python -m benchmarks.fuzz", description=__doc__)
    p.add_argument("--inputs", type=int, default=100_000, help="per target")
    p.add_argument("--target", action="append", choices=sorted(all_targets), default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout-s", type=float, default=2.0, help="per input")
    p.add_argument("--save", type=Path, default=None, help="write crashing inputs here")
    args = p.parse_args(argv)
    crashes = 0
    total = 0
    for name in args.target or list(all_targets):
        report = fuzz(all_targets[name], args.inputs, args.seed, args.timeout_s)
        total += report.inputs
        crashes += report.crashes
        print(format_report(report), flush=True)
        if args.save and report.crash_examples:
            args.save.mkdir(parents=True, exist_ok=True)
            for i, (data, _) in enumerate(report.crash_examples):
                (args.save / f"{name}-{args.seed}-{i}.bin").write_bytes(data)
    print(f"total: {total} inputs, {crashes} crashes")
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
