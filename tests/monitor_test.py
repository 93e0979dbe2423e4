"""Metric files: JSON lines, and TensorBoard event files read back with protobuf's own
wire-format decoder (an Event message type built from a descriptor) as the oracle."""

import io
import json
import os
import struct

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from sr_jax import monitor


def _event_class():
  """tensorflow.Event / Summary / Summary.Value, declared from their .proto fields."""
  file = descriptor_pb2.FileDescriptorProto(name="event_test.proto", package="t")
  value = file.message_type.add(name="Value")
  value.field.add(name="tag", number=1, type=9, label=1)
  value.field.add(name="simple_value", number=2, type=2, label=1)
  summary = file.message_type.add(name="Summary")
  summary.field.add(name="value", number=1, type=11, label=3, type_name=".t.Value")
  event = file.message_type.add(name="Event")
  event.field.add(name="wall_time", number=1, type=1, label=1)
  event.field.add(name="step", number=2, type=3, label=1)
  event.field.add(name="file_version", number=3, type=9, label=1)
  event.field.add(name="summary", number=5, type=11, label=1, type_name=".t.Summary")
  pool = descriptor_pool.DescriptorPool()
  pool.Add(file)
  return message_factory.GetMessageClass(pool.FindMessageTypeByName("t.Event"))


def _read_records(path):
  records = []
  with open(path, "rb") as f:
    data = f.read()
  offset = 0
  while offset < len(data):
    header = data[offset:offset + 8]
    (length,) = struct.unpack("<Q", header)
    assert struct.unpack("<I", data[offset + 8:offset + 12])[0] == monitor._masked_crc(header)
    payload = data[offset + 12:offset + 12 + length]
    crc = struct.unpack("<I", data[offset + 12 + length:offset + 16 + length])[0]
    assert crc == monitor._masked_crc(payload)
    records.append(payload)
    offset += 16 + length
  return records


def test_crc32c_check_value():
  assert monitor.crc32c(b"123456789") == 0xE3069283  # RFC 3720 check value


def test_metric_writer_jsonl_and_tensorboard(tmp_path):
  writer = monitor.MetricWriter(str(tmp_path))
  writer.write(10, {"loss": 2.5, "lr": 1e-4})
  writer.write(20, {"loss": float("nan")})
  writer.close()
  lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert lines[0] == {"step": 10, "loss": 2.5, "lr": 1e-4}
  assert lines[1]["loss"] == "nan"
  (events_file,) = [f for f in os.listdir(tmp_path) if f.startswith("events.out.tfevents")]
  event_class = _event_class()
  events = [event_class.FromString(r) for r in _read_records(tmp_path / events_file)]
  assert events[0].file_version == "brain.Event:2"
  assert events[1].step == 10
  values = {v.tag: v.simple_value for v in events[1].summary.value}
  assert values["loss"] == 2.5 and abs(values["lr"] - 1e-4) < 1e-10
  assert events[2].step == 20


def test_progress_line_shows_steps_elapsed_and_time_left(monkeypatch):
  now = [100.0]
  monkeypatch.setattr(monitor.time, "time", lambda: now[0])
  stream = io.StringIO()
  progress = monitor.Progress(100, stream=stream, start=0, unit=" steps")
  now[0] = 130.0
  progress.update(10, "loss 2.0")  # 30 s for 10 steps: 90 steps left take 4m30s
  assert stream.getvalue().splitlines()[-1] == (
      "[##..................] 10/100 steps 30s, 4m30s left  loss 2.0")
  budget = monitor.Progress(1000, stream=stream, budget_seconds=120.0)
  now[0] = 190.0
  budget.update(5)  # the 2-minute budget ends in 60 s, sooner than 995 more steps
  assert stream.getvalue().splitlines()[-1] == "[##########..........] 5/1000 1m00s, 1m00s left"


def test_progress_line_counts_time_left_from_a_work_budget(monkeypatch):
  now = [100.0]
  monkeypatch.setattr(monitor.time, "time", lambda: now[0])
  stream = io.StringIO()
  # A FLOPs budget 20% spent by an earlier process; 10 steps of a million-step schedule.
  progress = monitor.Progress(1_000_000, stream=stream, work_done=0.2)
  now[0] = 160.0
  progress.update(10, work_done=0.5)  # 30% in 60 s: the last 50% takes 100 s
  assert stream.getvalue().splitlines()[-1] == "[##########..........] 10/1000000 1m00s, 1m40s left"
