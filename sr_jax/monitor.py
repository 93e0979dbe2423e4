"""Training metrics: JSON lines, TensorBoard event files, and a terminal progress line.

Only process 0 writes. The TensorBoard writer speaks the event-file format directly
(TFRecord framing + a hand-encoded `Event{wall_time, step, Summary{Value{tag,
simple_value}}}` protobuf), so logging needs neither TensorFlow nor tensorboard.
"""

from __future__ import annotations

import json
import math
import os
import socket
import struct
import sys
import time

import jax


def _crc32c_table() -> list[int]:
  table = []
  for byte in range(256):
    crc = byte
    for _ in range(8):
      crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    table.append(crc)
  return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
  out = bytearray()
  while True:
    byte = value & 0x7F
    value >>= 7
    out.append(byte | (0x80 if value else 0))
    if not value:
      return bytes(out)


def _field(number: int, wire_type: int, payload: bytes) -> bytes:
  return _varint(number << 3 | wire_type) + payload


def _length_delimited(number: int, payload: bytes) -> bytes:
  return _field(number, 2, _varint(len(payload)) + payload)


def encode_event(step: int, wall_time: float, scalars: dict[str, float] | None = None,
                 file_version: str | None = None) -> bytes:
  """The protobuf bytes of one tensorflow.Event."""
  out = _field(1, 1, struct.pack("<d", wall_time)) + _field(2, 0, _varint(step))
  if file_version is not None:
    out += _length_delimited(3, file_version.encode())
  if scalars:
    values = b"".join(
        _length_delimited(1, _length_delimited(1, tag.encode())
                          + _field(2, 5, struct.pack("<f", value)))
        for tag, value in scalars.items())
    out += _length_delimited(5, values)
  return out


def tfrecord(data: bytes) -> bytes:
  header = struct.pack("<Q", len(data))
  return (header + struct.pack("<I", _masked_crc(header)) + data
          + struct.pack("<I", _masked_crc(data)))


class MetricWriter:
  """Appends metrics to workdir/metrics.jsonl and a TensorBoard event file."""

  def __init__(self, workdir: str, tensorboard: bool = True):
    self.enabled = jax.process_index() == 0
    if not self.enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
    self._events = None
    if tensorboard:
      name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}"
      self._events = open(os.path.join(workdir, name), "ab")
      self._events.write(tfrecord(encode_event(0, time.time(),
                                               file_version="brain.Event:2")))

  def write(self, step: int, metrics: dict[str, float]) -> None:
    if not self.enabled:
      return
    clean = {k: float(v) for k, v in metrics.items()}
    self._jsonl.write(json.dumps({"step": step, **{k: (v if math.isfinite(v) else str(v))
                                                   for k, v in clean.items()}}) + "\n")
    self._jsonl.flush()
    if self._events is not None:
      self._events.write(tfrecord(encode_event(step, time.time(), clean)))
      self._events.flush()

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      if self._events is not None:
        self._events.close()


class Progress:
  """One self-overwriting terminal line (a plain line per update when not a tty): a
  bar, steps done, elapsed time, the time left (from the rate since the start, or the
  time budget, or the rate at which a work budget of examples or FLOPs is being spent,
  whichever ends soonest) and the caller's text."""

  def __init__(self, total: int, stream=None, start: int = 0,
               budget_seconds: float | None = None, unit: str = "",
               work_done: float | None = None):
    """work_done: the fraction of a work budget done before this process started (None:
    no work budget)."""
    stream = sys.stderr if stream is None else stream
    self.total, self.stream, self.first, self.unit = total, stream, start, unit
    self.budget = budget_seconds
    self.work_start = work_done
    self.interactive = stream.isatty() and jax.process_index() == 0
    self.start = time.time()

  def update(self, step: int, text: str = "", work_done: float | None = None) -> None:
    if jax.process_index() != 0:
      return
    elapsed = time.time() - self.start
    fraction = min(step / max(self.total, 1), 1.0)
    left = (self.total - step) * elapsed / (step - self.first) if step > self.first else None
    if self.work_start is not None and work_done is not None and work_done > self.work_start:
      fraction = max(fraction, min(work_done, 1.0))
      work_left = max(1.0 - work_done, 0.0) * elapsed / (work_done - self.work_start)
      left = work_left if left is None else min(left, work_left)
    if self.budget:
      fraction = max(fraction, min(elapsed / self.budget, 1.0))
      left = max(self.budget - elapsed, 0.0) if left is None else min(left, max(
          self.budget - elapsed, 0.0))
    bar = "#" * int(20 * fraction) + "." * (20 - int(20 * fraction))
    eta = "" if left is None else f", {_duration(left)} left"
    line = (f"[{bar}] {step}/{self.total}{self.unit} {_duration(elapsed)}{eta}"
            + (f"  {text}" if text else ""))
    if self.interactive:
      self.stream.write("\r" + line[:160].ljust(160))
    else:
      self.stream.write(line + "\n")
    self.stream.flush()

  def close(self) -> None:
    if self.interactive:
      self.stream.write("\n")


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  if seconds < 60:
    return f"{seconds}s"
  if seconds < 3600:
    return f"{seconds // 60}m{seconds % 60:02d}s"
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
