"""One-command accelerator lease: check the device, measure training throughput, train.

    bash benchmarks/device_train.sh                       # on the lent machine (see there)
    python benchmarks/device_train.py --out /tmp/out --allow_cpu --throughput_steps 2 \
        --sizes debug --size debug --train_minutes 0.2    # the CPU rehearsal the tests run

Four stages, each writing what it measured to --out before the next starts, so a lease
cut short still returns its numbers; a stage that fails leaves its traceback in
results.json and the next one still runs:
1. devices: what JAX sees (platform, kind, count); refuses to go on without an
   accelerator unless --allow_cpu.
2. throughput: for each of --sizes, `--throughput_steps` timed train steps (after one
   compiling step) on batches generated beforehand: examples/s and MFU (padded and
   real FLOPs, flops.py), bf16 compute with float32 master weights.
3. training: train.py's loop on --size for --train_minutes of wall-clock (less when
   --deadline_minutes leaves less after --infer_reserve_minutes), the input pipeline in
   --workers grain processes, no orbax checkpoints, warm-started from --init_from when
   its model config matches (a fresh model otherwise; the warm start resumes the file's
   learning-rate schedule), the rate falling linearly to 0 over the last
   --cooldown_fraction of its minutes (a finished model at the budget), then the model
   file written to --out in parts of <= 16 MiB (pretrained.py joins them), with its
   metrics.jsonl and the model file of the validation nearest half-way (for the
   learning curve). If training fails after a validation, that validation's export is
   written; before one, with workers, it runs again with the data generated in its own
   process.
4. inference: the whole fitting pipeline on the device (decoding, scoring, refinement,
   --infer_search seconds of search), eval.py's way (suite_runner), for the model just
   trained and for --init_from, on the same --infer_problems in-domain problems with
   --infer_decode_batch bags per decoding call: R2 > 0.99, mean clipped R2, seconds
   per dataset and per stage. It checks the GPU path of what users run, and says
   whether the new model beats the shipped one on the same problems.

results.json in --out holds every number; the last lines printed are a short table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import shutil
import sys
import time
import traceback

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # sr_jax and configs/ from the checkout, no install needed

PART_BYTES = 16 * 2 ** 20 - 4096  # the lease returns files of at most 16 MiB


def _devices(args) -> dict:
  import jax
  devices = jax.devices()
  info = {"platform": devices[0].platform, "kind": devices[0].device_kind,
          "count": len(devices), "jax": jax.__version__}
  print(f"devices: {info}", flush=True)
  if info["platform"] == "cpu" and not args.allow_cpu:
    raise SystemExit("JAX sees no accelerator (platform cpu); pass --allow_cpu to rehearse")
  return info


def _run_config(size: str, args):
  """configs/accelerator.py (the shipped model's recipe) at `size`, with the flags that
  change what the compiled train step depends on (dtype, batch shape, the optimizer's
  schedule, a warm start's schedule offset). The throughput and training stages share
  it: the second lease's training recompiled for ~50 s because its warmup differed
  from the throughput stage's, so the persistent compile cache missed."""
  from configs import accelerator
  from sr_jax import pretrained, training
  config = accelerator.get_config(f"size={size}")
  if args.dtype:
    config.model.dtype = args.dtype
  if args.points_per_batch:
    config.data.points_per_batch = args.points_per_batch
  if args.point_buckets:
    config.data.point_buckets = tuple(int(n) for n in args.point_buckets.split(","))
  if args.target_buckets:
    config.data.target_buckets = tuple(int(n) for n in args.target_buckets.split(","))
  if args.learning_rate:
    config.optim.learning_rate = args.learning_rate
  if args.warmup_steps is not None:
    config.optim.warmup_steps = args.warmup_steps
  if args.init_from:  # a warm start where the file is this size's architecture
    header = pretrained.read_header(args.init_from)
    if pretrained.model_config(header, args.init_from) == pretrained.architecture(
        training.RunConfig.from_config_dict(config).model):
      config.train.init_from = args.init_from
      config.optim.schedule_offset = args.schedule_offset
  return config


def _training_config(args):
  """The training stage's config: _run_config of --size and the loop's settings."""
  config = _run_config(args.size, args)
  if args.workers is not None:
    config.data.num_workers = args.workers
  if args.eval_every:
    config.train.eval_every = args.eval_every
  config.train.max_minutes = args.train_minutes
  config.train.cooldown_minutes = args.cooldown_fraction * args.train_minutes
  config.train.checkpoint_every = 0  # the lease keeps only the model file: no orbax saves
  config.train.keep_model_files = True  # for the midpoint file (_midpoint_model)
  return config


def _midpoint_model(workdir: str, final_step: int, out: str, size: str) -> str | None:
  """Copies to `out` the kept model file of the validation nearest half of final_step
  (a second point for the learning curve: in-domain R2 against examples), if there is
  one before the final step and it fits one returned file (<= 16 MiB; with the final
  model, results, logs and metrics the lease's 8 files are then full)."""
  folder = os.path.join(workdir, "models")
  kept = {int(name[len("step_"):-len(".srj")]): os.path.join(folder, name)
          for name in (os.listdir(folder) if os.path.isdir(folder) else [])
          if name.startswith("step_") and name.endswith(".srj")}
  earlier = [step for step in kept if step < final_step]
  if not earlier:
    return None
  step = min(earlier, key=lambda s: abs(s - final_step / 2))
  if os.path.getsize(kept[step]) > PART_BYTES:
    print(f"midpoint model of step {step} not returned: over one file's 16 MiB", flush=True)
    return None
  name = f"model_{size}_step{step}.srj"
  shutil.copy(kept[step], os.path.join(out, name))
  return name


def _throughput(size: str, args) -> dict:
  """Device throughput of one size: pre-generated batches, no input pipeline."""
  import jax
  import numpy as np
  from flax import nnx
  from sr_jax import data, flops, model, training
  cfg = training.resolve_schedule_offset(
      training.RunConfig.from_config_dict(_run_config(size, args)))
  mesh = training.sharding.make_mesh(cfg.mesh)
  graphdef, state, shardings = training.create_state(cfg, mesh)
  train, evaluate, batch_shardings = training.compile_steps(cfg, graphdef, shardings, mesh)
  # One batch shape for all timed steps: the largest point and target buckets (no
  # length groups; the real-FLOP MFU discounts the padding). With the default buckets
  # that is training's one shape, so training finds this compile in the cache.
  host = data.HostBatch(dataclasses.replace(
      cfg.data, point_buckets=cfg.data.point_buckets[-1:],
      target_buckets=cfg.data.target_buckets[-1:], length_groups=1))
  batches = [host(step) for step in range(args.throughput_steps + 1)]
  length = batches[0]["targets_BxL"].shape[1]
  with jax.set_mesh(mesh):
    start = time.time()
    # The factor as the loop passes it (cooldown_factor's float32): the same program.
    state, metrics = train(state, training.to_global(batches[0], batch_shardings),
                           np.float32(1))
    jax.block_until_ready(metrics)
    compile_seconds = time.time() - start
    start = time.time()
    for batch in batches[1:]:
      state, metrics = train(state, training.to_global(batch, batch_shardings), np.float32(1))
    jax.block_until_ready(metrics)
    seconds = time.time() - start
    # The validation batches have this shape too: compiled here, training's first
    # validation finds the eval step in the cache (the first lease waited ~20 s there).
    start = time.time()
    jax.block_until_ready(evaluate(state, training.to_global(batches[0], batch_shardings)))
    eval_compile_seconds = time.time() - start
  examples = sum(float(b["example_mask_B"].sum()) for b in batches[1:])
  padded = real = 0.0
  for b in batches[1:]:
    p, r = training._flops_of_batch(cfg, b)
    padded, real = padded + p, real + r
  peak = flops.device_peak_flops(jax.devices()[0], cfg.model.dtype)
  result = {"size": size, "parameters": model.count_params(nnx.merge(graphdef, state)[0]),
            "batch": int(batches[1]["example_mask_B"].sum()),
            "points": cfg.data.point_buckets[-1],
            "target_len": int(length), "compile_s": round(compile_seconds, 1),
            "eval_compile_s": round(eval_compile_seconds, 1),
            "step_s": seconds / len(batches[1:]), "examples_per_s": examples / seconds,
            "tflops_per_device": padded / seconds / jax.device_count() / 1e12,
            "mfu": flops.mfu(padded, seconds, jax.device_count(), peak),
            "mfu_real": flops.mfu(real, seconds, jax.device_count(), peak),
            "dtype": cfg.model.dtype}
  print(f"throughput {size}: {result}", flush=True)
  return result


def _train(args) -> dict:
  """train.py's loop for --train_minutes; returns the model card's numbers."""
  from sr_jax import pretrained, training
  config = _training_config(args)
  if args.init_from and not config.train.init_from:
    print(f"not warm-starting: {args.init_from} is another model config", flush=True)
  workdir = os.path.join(args.workdir, args.size)
  shutil.rmtree(workdir, ignore_errors=True)
  start = time.time()
  model_file = os.path.join(workdir, "model.srj")
  try:
    metrics = training.train_and_evaluate(config, workdir)
  except Exception:
    traceback.print_exc()
    if os.path.exists(model_file):  # keep the last validation's export
      print("training failed; writing the model file of its last validation", flush=True)
      metrics = {}
    elif config.data.num_workers:  # the worker pipeline broke: the budget's rest without
      print("training failed before its first validation; again with the data generated "
            "in the training process", flush=True)
      config.data.num_workers = 0
      config.train.max_minutes = max(args.train_minutes - (time.time() - start) / 60, 0.2)
      shutil.rmtree(workdir, ignore_errors=True)
      metrics = training.train_and_evaluate(config, workdir)
    else:
      raise
  seconds = time.time() - start
  header, arrays = pretrained.read(model_file)
  header["card"]["command"] = "benchmarks/device_train.py " + " ".join(sys.argv[1:])
  parts = pretrained.write_arrays(os.path.join(args.out, f"model_{args.size}.srj"),
                                  pretrained.model_config(header), arrays, header["card"],
                                  dtype="float16", part_bytes=PART_BYTES)
  shutil.copy(os.path.join(workdir, "metrics.jsonl"), os.path.join(args.out, "metrics.jsonl"))
  midpoint = _midpoint_model(workdir, header["card"]["steps"], args.out, args.size)
  result = {"size": args.size, "seconds": round(seconds, 1),
            "steps": header["card"]["steps"], "examples": header["card"]["examples"],
            "validation": header["card"]["validation"],
            "examples_per_s": metrics.get("examples_per_sec"), "mfu": metrics.get("mfu"),
            "mfu_real": metrics.get("mfu_real"),
            "first_batch_s": metrics.get("startup_first_batch_s"),
            "first_step_s": metrics.get("startup_first_step_s"),
            "files": [os.path.basename(p) for p in parts],
            "midpoint_file": midpoint}
  print(f"training: {result}", flush=True)
  return result


def _inference(model_file: str, args) -> dict:
  """eval.py's pipeline on in-domain problems with one model file."""
  from sr_jax import inference, report, suite_runner, suites
  problems = suites.load("in_domain", size=args.infer_problems)
  config = suite_runner.SuiteConfig(inference=inference.InferenceConfig(
      decode_batch=args.infer_decode_batch, search_time=args.infer_search))
  outdir = os.path.join(args.workdir, "eval_" + os.path.basename(model_file))
  shutil.rmtree(outdir, ignore_errors=True)
  start = time.time()
  rows = suite_runner.run(inference.load_model(model_file), problems, outdir, config)
  seconds = time.time() - start
  table = report.summary(rows).iloc[0]
  stages = {stage: round(s, 2) for stage, s in report.stage_seconds(rows).items()}
  result = {"model": os.path.basename(model_file), "problems": len(rows),
            "r2_above_0.99": float(table["R2>0.99"]),
            "mean_clipped_r2": float(table["mean R2 (clip 0)"]),
            "seconds": round(seconds, 1), "seconds_per_dataset": seconds / len(rows),
            "stage_seconds": stages, "decode_batch": args.infer_decode_batch,
            "search_seconds": args.infer_search}
  print(f"inference: {result}", flush=True)
  return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default=os.environ.get("OUT", "device_out"))
  parser.add_argument("--workdir", default="/tmp/sr_jax_device")
  parser.add_argument("--allow_cpu", action="store_true")
  parser.add_argument("--sizes", default="s7m",
                      help="throughput sizes (the lease of 2026-12-04 measured s3m,s7m,s90m: "
                           "each compile costs ~25-50 s of training)")
  parser.add_argument("--throughput_steps", type=int, default=10)
  # The recipe's flags default to configs/accelerator.py's values (unset: the preset's).
  preset = "configs/accelerator.py's"
  parser.add_argument("--points_per_batch", type=int, help=f"padded points per batch ({preset})")
  parser.add_argument("--point_buckets", help=f"comma-separated ({preset})")
  parser.add_argument("--target_buckets", help=f"comma-separated ({preset})")
  parser.add_argument("--dtype", help=f"compute dtype ({preset})")
  parser.add_argument("--size", default="s7m", help="the size to train")
  parser.add_argument("--train_minutes", type=float, default=8.0,
                      help="at most; less when the deadline leaves less")
  parser.add_argument("--workers", type=int, help=f"grain worker processes ({preset})")
  parser.add_argument("--learning_rate", type=float, help=f"peak ({preset})")
  parser.add_argument("--warmup_steps", type=int, help=f"({preset})")
  parser.add_argument("--eval_every", type=int, help=f"steps between validations ({preset})")
  parser.add_argument("--init_from", default=str(ROOT / "sr_jax" / "assets" / "default_model.srj"))
  parser.add_argument("--schedule_offset", type=int, default=-1,
                      help="a warm start's learning rate resumes at this step of the schedule "
                           "(-1: the file's steps; 0: warm up to the peak again, as the "
                           "second lease did)")
  # On the CPU, 200 steps of cooldown (80k examples, 3% of what the shipped s7m had seen)
  # took its validation loss from 2.000 to 1.9925, as much as the lease's last ~330k
  # examples at the undecayed rate (BENCHMARKS.md, "A cooldown"); WSD runs use 10-20%.
  parser.add_argument("--cooldown_fraction", type=float, default=0.2,
                      help="the last fraction of the training minutes takes the learning "
                           "rate linearly to 0")
  parser.add_argument("--infer_problems", type=int, default=30,
                      help="in-domain problems of the inference stage (0: skip it); the "
                           "second lease ran 60 in 89 s, mostly compiles")
  parser.add_argument("--infer_decode_batch", type=int, default=64)
  parser.add_argument("--infer_search", type=float, default=0.0,
                      help="seconds of search per dataset in the inference stage")
  parser.add_argument("--infer_reserve_minutes", type=float, default=1.25,
                      help="minutes of --deadline_minutes that training leaves to inference")
  parser.add_argument("--deadline_minutes", type=float, default=9.3,
                      help="the inference stage starts no model with less than a minute "
                           "of this left (the device tool's command limit is 10)")
  return parser.parse_args(argv)


def main():
  args = parse_args()
  started = time.time()
  if args.init_from and not os.path.exists(args.init_from):
    args.init_from = ""
  os.makedirs(args.out, exist_ok=True)
  results = {"argv": sys.argv[1:], "started": time.strftime("%Y-%m-%d %H:%M:%S")}

  def save():
    with open(os.path.join(args.out, "results.json"), "w") as f:
      json.dump(results, f, indent=1, default=str)

  def stage(name: str, function, *arguments):
    """One stage's result, or None with its traceback in results["errors"]: a failing
    stage must not cost the lease the stages after it. The caller stores and saves."""
    try:
      return function(*arguments)
    except Exception:
      message = traceback.format_exc()
      print(f"stage {name} failed:\n{message}", flush=True)
      results.setdefault("errors", {})[name] = message
      return None

  results["devices"] = _devices(args)
  save()
  results["throughput"] = []
  for size in args.sizes.split(","):
    result = stage(f"throughput {size}", _throughput, size, args)
    if result is not None:
      results["throughput"].append(result)
    save()
  # Training takes what the deadline leaves after the inference stage's reserve, up to
  # --train_minutes: slow compiles in the throughput stage shorten it, not the lease.
  left_minutes = args.deadline_minutes - (time.time() - started) / 60
  args.train_minutes = max(min(args.train_minutes, left_minutes - args.infer_reserve_minutes),
                           0.01)
  print(f"training {args.size} for {args.train_minutes:.2f} minutes", flush=True)
  results["training"] = stage("training", _train, args)
  save()
  results["inference"] = []
  trained = os.path.join(args.out, f"model_{args.size}.srj")
  for model_file in ([trained] if results["training"] else []) + (
      [args.init_from] if args.init_from else []):
    left = args.deadline_minutes * 60 - (time.time() - started)
    if args.infer_problems and left < 60:
      print(f"inference of {model_file} skipped: {left:.0f} s left", flush=True)
    elif args.infer_problems:
      result = stage(f"inference {model_file}", _inference, model_file, args)
      if result is not None:
        results["inference"].append(result)
      save()
  save()  # the inference stage's list, empty where every model was skipped
  print(f"\n{'size':>6} {'params':>8} {'batch':>5} {'step ms':>8} {'ex/s':>9} {'MFU':>6} "
        f"{'MFU real':>8}")
  for r in results["throughput"]:
    print(f"{r['size']:>6} {r['parameters'] / 1e6:7.1f}M {r['batch']:5d} "
          f"{1e3 * r['step_s']:8.1f} {r['examples_per_s']:9.0f} {r['mfu']:6.1%} "
          f"{r['mfu_real']:8.1%}")
  t = results["training"] or {"size": args.size, "seconds": "-", "steps": 0,
                               "examples": 0, "validation": "failed", "files": []}
  print(f"trained {t['size']} for {t['seconds']} s: {t['steps']} steps, {t['examples']:.0f} "
        f"examples, validation {t['validation']}; files {t['files']}")
  for r in results["inference"]:
    print(f"{r['model']} on {r['problems']} in-domain problems: R2 > 0.99 "
          f"{r['r2_above_0.99']:.1%}, mean clipped R2 {r['mean_clipped_r2']:.3f}, "
          f"{r['seconds_per_dataset']:.3f} s per dataset")
  for name in results.get("errors", {}):
    print(f"FAILED: {name} (traceback in results.json and above)")
  if not results["throughput"] and results["training"] is None:
    sys.exit(3)  # no train step ran at all: device_train.sh retries with pinned packages


if __name__ == "__main__":
  main()
