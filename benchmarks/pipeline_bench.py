"""Input-pipeline throughput: examples/s of the data path alone (grain batch indices, teacher-store reads, masks).

Compare with the train step's examples/s (`optical-jax bench`): the pipeline should be >= 5x faster so it never
bounds training. Needs a workdir whose teacher store was built by `optical-jax precompute-teacher` for CONFIG.

  python -m benchmarks.pipeline_bench --config configs/demo_sw.py --workdir runs/demo/train/optical [--steps 200]
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", required=True)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--steps", type=int, default=200)
  parser.add_argument("overrides", nargs="*", help="a.b=v config overrides")
  args = parser.parse_args(argv)

  from optical_jax import config as config_lib
  from optical_jax.data import pipeline, training_data
  config = config_lib.load_config(args.config, args.overrides)
  data = training_data.build(config, args.workdir)
  batch = config.train.batch_size
  stream = pipeline.BatchStream(data.load_rows, data.num_examples, batch, config.seed, slice(0, batch))
  stream.batch(0)  # open the store readers
  start = time.perf_counter()
  for step in range(1, args.steps + 1):
    rows = stream.batch(step)
  single = time.perf_counter() - start
  start = time.perf_counter()
  for step, rows in stream.iterate(args.steps + 1):
    if step >= 2 * args.steps:
      break
  prefetched = time.perf_counter() - start
  del rows
  result = {"batch_size": batch, "steps": args.steps,
            "examples_per_s": args.steps * batch / single,
            "examples_per_s_prefetch": (args.steps - 1) * batch / prefetched}
  print(json.dumps(result, indent=2))
  return 0


if __name__ == "__main__":
  sys.exit(main())
