#!/usr/bin/env bash
# Training throughput of the ORIGINAL E2E code on this machine, for side-by-side numbers
# with benchmarks/train_throughput.py (BENCHMARKS.md, "Mixed precision against the
# original E2E code").
#
# Setup (once; E2E=/tmp/e2e by default, nothing of it lands in this repository):
#   fetch github:facebookresearch/symbolicregression (c4144c9) and unpack its tree in $E2E/src
#   python3.11 -m venv $E2E/venv && . $E2E/venv/bin/activate
#   pip install torch==2.13.0   # the CPU build on this machine's disk
#   pip install "numpy<2" sympy scipy scikit-learn pandas numexpr requests tqdm pyyaml \
#       sympytorch matplotlib seaborn   # sympytorch: imported, missing from environment.yml
#   in $E2E/src/symbolicregression/optim.py: inspect.getargspec -> inspect.getfullargspec
#     (Python 3.11 removed it; the only code change)
# Flags, not code: --eval_in_domain/--eval_on_pmlb are type=bool, so "" turns them off;
# with evaluation off the epoch end would fail, so the epoch is long and this script stops
# train.py after STEPS logged steps.
#
# Config: enc 2 / dec 4 layers, d 256, 8 heads, everything else at the repo's defaults
# (10,000 points per batch, float32, num_workers 0: data generated in the process).
# Prints each step's logged equations/s, then total equations / total time over steps
# SKIP+1..STEPS. Env: E2E, STEPS=25, SKIP=5, CAP_S=430 (stop early past it), NUM_WORKERS=0.
set -euo pipefail
E2E=${E2E:-/tmp/e2e}
STEPS=${STEPS:-25} SKIP=${SKIP:-5} CAP_S=${CAP_S:-430} NUM_WORKERS=${NUM_WORKERS:-0}
EXP_ID="measure_$(date +%s)_$$"
cd "$E2E/src"
exec "$E2E/venv/bin/python" - "$STEPS" "$SKIP" "$CAP_S" "$NUM_WORKERS" "$EXP_ID" <<'PY'
import re, subprocess, sys, time, os, shutil
steps, skip, cap, nw, exp_id = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5]
cmd = [sys.executable, "-u", "train.py", "--cpu", "true", "--num_workers", nw,
       "--n_enc_layers", "2", "--n_dec_layers", "4", "--enc_emb_dim", "256", "--dec_emb_dim", "256",
       "--n_enc_heads", "8", "--n_dec_heads", "8",
       "--print_freq", "1", "--n_steps_per_epoch", "100000", "--max_epoch", "1",
       "--eval_in_domain", "", "--eval_on_pmlb", "", "--save_periodic", "0",
       "--exp_name", "measure", "--exp_id", exp_id, "--dump_path", os.path.join(os.environ.get("E2E", "/tmp/e2e"), "dump")]
print("cmd:", " ".join(repr(c) if c == "" else c for c in cmd), flush=True)
import torch; print("torch", torch.__version__, "threads", torch.get_num_threads(), "cpus", os.cpu_count(), flush=True)
pat = re.compile(r" - \s*(\d+) - \s*([\d.]+) equations/s - \s*([\d.]+) words/s .*Total Eq: (\S+)")
t0 = time.monotonic()
p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
rows, t_first_batch, last_t = [], None, None
try:
    for line in p.stdout:
        now = time.monotonic()
        if "Starting epoch 0" in line:
            last_t = now
        m = pat.search(line)
        if m:
            it, eqs, ws = int(m.group(1)), float(m.group(2)), float(m.group(3))
            dt = now - last_t; last_t = now
            rows.append((it, eqs, ws, dt))
            print(f"step {it:3d}  {eqs:8.2f} equations/s  {ws:9.2f} words/s  step_time {dt:7.2f}s  t={now-t0:6.1f}s", flush=True)
            if it >= steps or (now - t0 > cap and it > skip + 2):
                break
        elif "Traceback" in line or "Error" in line:
            print(line, end="", flush=True)
finally:
    if p.poll() is None:
        p.terminate()
        try: p.wait(timeout=20)
        except subprocess.TimeoutExpired: p.kill(); p.wait()
shutil.rmtree(os.path.join(os.environ.get("E2E", "/tmp/e2e"), "dump", "measure", exp_id), ignore_errors=True)
steady = [r for r in rows if r[0] > skip]
if not steady:
    sys.exit("no steady-state steps logged (see output above)")
T = sum(r[3] for r in steady)
E = sum(r[1] * r[3] for r in steady)   # equations = rate * step time
W = sum(r[2] * r[3] for r in steady)
print(f"RESULT steps {steady[0][0]}..{steady[-1][0]} ({len(steady)} steps, {T:.1f}s): "
      f"{E/T:.2f} equations/s, {W/T:.1f} words/s, {T/len(steady):.2f} s/step, ~{E/len(steady):.0f} eq/step; "
      f"first step (incl. 2000-sample queue fill) {rows[0][3]:.1f}s; wall {time.monotonic()-t0:.0f}s")
PY
