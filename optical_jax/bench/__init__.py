"""`optical-jax bench`: throughput of the OPTICAL train step, its OT share, and the PyTorch + POT peer side by side.

One run: build the sharded train step and its twin with the OT loss swapped for a same-shape MSE loss; compile both
(timed apart); warm up; then time interleaved rounds (OT step, MSE step[, reference step at each torch thread count])
so that a drifting machine load hits everything alike; then the OT loss alone (optical_jax[, POT batched, POT
per-pair loop]) on identical inputs. Any XLA compilation inside the timed rounds counts as a recompile.

  optical-jax bench --config configs/bench_cpu.py --compare --json runs/bench.json

Multi-host (`--distributed`, or on its own on a multi-host TPU slice / multi-task SLURM job, as `train` does): every
process runs this same program on its devices' shards of the one global step (train_bench.py); timings are of the
global step; process 0 alone prints the report and writes the JSON and the sweep's files. `--compare` needs one
process: the PyTorch peer runs on one host.

Modules: runner.py (the command: measure, compare, check the targets), formulas.py (FLOPs, throughput, OT share),
train_bench.py (the JAX step and OT loss under test), timing.py, sweep.py (`--sweep`), report.py (console and JSON),
settings.py (the knobs), peer.py and torch_reference.py (`--compare`: the PyTorch + POT step; torch and POT are
the `compare` extra, imported only on that path).
"""
