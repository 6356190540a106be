"""optical_jax.bench: JSON fields, 0 recompiles, OT share in [0, 1], the --compare ratios, batches, sweep files.

No timing assertions: the machine is shared. Values are checked against independent formulas (hand-written FLOPs,
B*Ls/t), POT's loss on the same inputs, and the structure of the batches.
"""
import csv
import json
import math
import pathlib
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from optical_jax import cli
from optical_jax import config as config_lib
from optical_jax import sharding
from optical_jax.bench import formulas
from optical_jax.bench import runner
from optical_jax.bench import settings as settings_lib
from optical_jax.bench import sweep as sweep_lib
from optical_jax.bench import timing
from optical_jax.bench import train_bench
from optical_jax.config_schema import SCHEMA
from optical_jax.errors import UserError

# Tiny shapes: 1 layer, hidden 32, projection to the teacher's 16 dims, 8 pairs (one per simulated device).
TINY = ["student.num_layers=1", "student.hidden_size=32", "student.num_heads=2", "student.intermediate_size=64",
        "student.vocab_size=128", "student.projection_dim=16", "teacher.dim=16", "train.batch_size=8",
        "data.max_len_student=8", "data.max_len_teacher=12", "ot.iterations=100", "ot.epsilon=0.1"]


def _tiny_config(*overrides):
  knobs = ["bench.warmup_steps=1", "bench.ot_repeats=2", "bench.max_rounds=2", "bench.torch_threads=(1,)"]
  return config_lib.load_config("configs/tiny.py", [*TINY, *knobs, *overrides])


@pytest.fixture(scope="module")
def compare_result(tmp_path_factory):
  path = tmp_path_factory.mktemp("bench") / "bench.json"
  result = runner.main(_tiny_config(), compare=True, json_path=str(path), steps=2)
  return result, json.loads(path.read_text())


def test_json_fields_recompiles_and_ot_share(compare_result):
  result, written = compare_result
  for key in ("step_time_median_s", "step_time_p90_s", "sequences_per_s", "padded_tokens_per_s", "real_tokens_per_s",
              "train_step_flops", "mfu", "device_memory", "compiled_memory_per_device", "ot_share", "recompiles",
              "compile", "ot_loss", "environment", "config", "targets", "compare"):
    assert key in written, key
  assert written["recompiles"] == 0
  assert 0.0 <= written["ot_share"] <= 1.0
  assert written["losses_finite"] and written["timed_steps"] == 2
  assert written["cpu_s_per_step_median"] > 0 and written["page_faults_per_step_median"] >= 0
  assert 0.0 <= written["ot_share_paired_median"] <= 1.0
  median = written["step_time_median_s"]
  assert median > 0 and written["step_time_p90_s"] >= median
  assert written["padded_tokens_per_s"] == pytest.approx(8 * 8 / median)
  assert 0 < written["real_tokens_per_s"] <= written["padded_tokens_per_s"]
  assert written["real_tokens_per_batch"] >= 8 * math.ceil(0.5 * 8)  # lengths >= ceil(0.5 * Ls)
  # Hand-written FLOPs: B*Ls*(6*N_ne + 12*n_layer*Ls*d) + 6*B*Ls*Lt*d_e + 6*B*Ls*d*d_proj.
  n_ne = 1 * (4 * 32 * 32 + 2 * 32 * 64)
  expected = 8 * 8 * (6 * n_ne + 12 * 1 * 8 * 32) + 6 * 8 * 8 * 12 * 16 + 6 * 8 * 8 * 32 * 16
  assert written["train_step_flops"] == expected
  assert 0 < written["mfu"] and written["peak_source"].startswith("cpu")
  assert written["device_memory"]["peak_bytes_max"] is None and "n/a" in written["device_memory"]["note"]
  assert written["compiled_memory_per_device"]["total_bytes"] > 0
  assert written["compile"]["train_step"]["ot"]["xla_compile_s"] > 0
  assert written["environment"]["num_devices"] == len(jax.devices())
  assert written["targets"]["recompiles"]["met"] is True
  assert written["padded_tokens_per_device"] == 8 * 8 / 8
  assert written["targets"]["mfu"] == {"value": None, "target": ">= 0.4", "met": None}  # accelerators only
  assert written == json.loads(json.dumps(result, default=float))


def test_compare_ratios(compare_result):
  _, written = compare_result
  k = written["compare"]
  for key in ("ot_speedup_vs_pot_batched", "ot_speedup_vs_pot_loop", "step_time_ratio_vs_torch", "ot_share",
              "recompiles", "mfu"):
    assert key in k, key
  for key in ("ot_speedup_vs_pot_batched", "ot_speedup_vs_pot_loop", "step_time_ratio_vs_torch",
              "step_time_ratio_vs_torch_paired_median", "cpu_time_ratio_vs_torch"):
    assert np.isfinite(k[key]) and k[key] > 0, key
  times = k["ot_loss_fwd_bwd_median_s"]
  assert k["ot_speedup_vs_pot_batched"] == pytest.approx(times["pot_batched"] / times["optical_jax"])
  assert k["step_time_ratio_vs_torch"] == pytest.approx(written["step_time_median_s"] / k["torch_step_time_median_s"])
  assert k["identical_computation"] and not k["differences"]
  assert k["reference"]["config"]["projection_dim"] == 16 and k["torch_losses_finite"]
  assert "benchmarks" not in sys.modules  # the peer ships in the package: no repository checkout needed
  # Identical inputs, converged (100 iterations at eps 0.1): the three solvers give the same <P, C>.
  values = k["ot_loss_value"]
  assert values["pot_batched"] == pytest.approx(values["optical_jax"], rel=1e-3)
  assert values["pot_loop"] == pytest.approx(values["optical_jax"], rel=1e-3)


def test_make_batches_are_sharded_prefix_masked_and_padded():
  config = _tiny_config("ot.tokens=content", "ot.marginals=idf")
  mesh = sharding.create_mesh(config.mesh)
  batches = train_bench.make_batches(config, mesh, pad_id=0, vocab_size=128, teacher_dim=16, count=2,
                                     min_real_frac=0.5)
  assert len(batches) == 2
  b = jax.device_get(batches[0])
  assert set(b) == {"student_ids", "student_mask", "teacher_tokens", "teacher_mask", "student_ot_mask",
                    "teacher_ot_mask", "student_weights", "teacher_weights"}
  assert b["student_ids"].shape == (8, 8) and b["teacher_tokens"].shape == (8, 12, 16)
  assert b["teacher_tokens"].dtype == np.float16
  for mask, length in ((b["student_mask"], 8), (b["teacher_mask"], 12)):
    lengths = mask.sum(1)
    assert np.all(lengths >= math.ceil(0.5 * length)) and np.all(lengths <= length)
    np.testing.assert_array_equal(mask, np.arange(length)[None] < lengths[:, None])  # prefix masks
  assert np.all(b["student_ids"][b["student_mask"] == 0] == 0) and np.all(b["student_ids"][b["student_mask"] == 1] > 0)
  np.testing.assert_array_equal(b["student_ot_mask"].sum(1), b["student_mask"].sum(1) - 2)
  assert np.all(b["teacher_tokens"][b["teacher_mask"] == 0] == 0)
  assert np.all((b["student_weights"] > 0) == (b["student_mask"] > 0))
  assert batches[0]["student_ids"].sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"), None)
  assert not np.array_equal(b["student_ids"], jax.device_get(batches[1]["student_ids"]))


def test_ot_share_and_settings():
  assert formulas.ot_share(2.0, 1.5) == pytest.approx(0.25)
  assert formulas.ot_share(1.0, 1.2) == 0.0  # noise can make the MSE twin slower: clipped
  assert formulas.ot_share(1.0, None) == 0.0 and formulas.ot_share(None, None) is None
  assert train_bench.mse_variant(_tiny_config("loss.ot_weight=0.0", "loss.mse_weight=1.0")) is None
  mse = train_bench.mse_variant(_tiny_config())
  assert (mse.loss.ot_weight, mse.loss.mse_weight) == (0.0, 1.0)
  with pytest.raises(UserError, match="bench.not_a_knob"):
    settings_lib.load_config("configs/tiny.py", ["bench.not_a_knob=1"])
  with pytest.raises(UserError, match="--steps"):
    runner.run(_tiny_config(), steps=0, watch=None)


def test_settings_defaults_come_from_the_schema_and_reach_configs_without_a_bench_section():
  config = settings_lib.load_config("configs/tiny.py", ["bench.steps=3", "bench.sweep_batch=(16, 32)"])
  resolved = settings_lib.bench_settings(config)
  assert (resolved.steps, resolved.sweep_batch) == (3, (16, 32))
  defaults = {k.partition(".")[2]: f.default for k, f in SCHEMA.items() if k.startswith("bench.")}
  assert {k: v for k, v in resolved.items() if k not in ("steps", "sweep_batch")} == {
      k: v for k, v in defaults.items() if k not in ("steps", "sweep_batch")}
  # `bench` and `train` load the same config.
  assert settings_lib.load_config("configs/tiny.py").to_dict() == config_lib.load_config("configs/tiny.py").to_dict()
  assert settings_lib.bench_settings(config_lib.load_config("configs/tiny.py")).steps == 10  # no bench section
  with pytest.raises(UserError, match="bench.sweep_batch must be a non-empty tuple of integers >= 1"):
    settings_lib.load_config("configs/tiny.py", ["bench.sweep_batch=(0,)"])
  with pytest.raises(UserError, match="bench.steps must be >= 1"):
    settings_lib.load_config("configs/tiny.py", ["bench.steps=0"])
  with pytest.raises(UserError, match="unknown config key 'bench.nope'"):
    settings_lib.load_config("configs/tiny.py", ["bench.nope=1"])
  partial = config_lib.load_config("configs/bench_cpu.py")  # a bench section without `steps`: filled in, kept
  assert partial.bench.steps == 10 and partial.bench.sweep_batch == (8, 32)


def test_cli_rejects_bad_steps(capsys):
  assert cli.main(["bench", "--config", "configs/tiny.py", "--steps", "0"]) == 2
  assert "--steps" in capsys.readouterr().err


@pytest.mark.parametrize("module", ["torch", "ot"])
def test_compare_without_the_compare_extra_is_one_line(module):
  # A fresh process, as if the extra were not installed: blocking torch here would leave POT imported without its
  # torch backend for the tests that run after this one.
  code = textwrap.dedent(f"""
      import sys
      class NotInstalled:
        def find_spec(self, name, path=None, target=None):
          if name.split(".")[0] == {module!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
      sys.meta_path.insert(0, NotInstalled())
      from optical_jax import cli
      sys.exit(cli.main(["bench", "--config", "configs/tiny.py", "--compare"]))""")
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert proc.stderr == "optical-jax: error: --compare needs torch and POT: pip install 'optical_jax[compare]'\n"


def test_bench_cpu_config_is_the_demo_student():
  config = config_lib.load_config("configs/bench_cpu.py")
  s = config.student
  assert (s.num_layers, s.hidden_size, s.num_heads, s.intermediate_size, s.vocab_size) == (12, 384, 12, 1536, 250037)
  assert (config.train.batch_size, config.data.max_len_student, config.data.max_len_teacher, config.teacher.dim) == (
      32, 32, 128, 384)
  settings_lib.bench_settings(config)  # every bench.* knob in range


def test_sweep_csv_and_plots(tmp_path):
  rows = [dict(batch=b, student_len=ls, iterations=k, step_time_median_s=0.1 * b, step_time_p90_s=0.1 * b,
               sequences_per_s=10.0, padded_tokens_per_s=100.0 * b, real_tokens_per_s=80.0 * b,
               train_step_flops=1e9, mfu=0.1, mse_step_time_median_s=0.05 * b, ot_share=0.01 * k, xla_compile_s=1.0,
               recompiles=0) for b in (8, 16) for ls in (16, 32) for k in (10, 50)]
  files = {"csv": str(tmp_path / "s.csv"), "throughput_mfu_png": str(tmp_path / "t.png"),
           "ot_share_png": str(tmp_path / "o.png")}
  sweep_lib.write_csv(rows, files["csv"])
  sweep_lib.plot(rows, files, reference_iterations=50)
  with open(files["csv"]) as f:
    read = list(csv.DictReader(f))
  assert len(read) == 8 and tuple(read[0]) == sweep_lib.COLUMNS
  assert float(read[-1]["ot_share"]) == pytest.approx(0.5)
  for key in ("throughput_mfu_png", "ot_share_png"):
    assert pathlib.Path(files[key]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_run_sweep_one_point(tmp_path):
  config = _tiny_config("bench.sweep_batch=(8,)", "bench.sweep_student_len=(8,)", "bench.sweep_iterations=(5, 20)",
                        "bench.sweep_steps=1")
  with timing.CompileWatch() as watch:
    out = sweep_lib.run_sweep(config, watch=watch, json_path=str(tmp_path / "b.json"))
  assert [(r["batch"], r["student_len"], r["iterations"]) for r in out["rows"]] == [(8, 8, 5), (8, 8, 20)]
  assert all(r["recompiles"] == 0 and 0 <= r["ot_share"] <= 1 for r in out["rows"])
  assert all(pathlib.Path(p).is_file() for p in out["files"].values())


def test_reference_freeze_word_embeddings():
  import torch
  from optical_jax.bench import torch_reference as ref
  cfg = ref.ReferenceConfig(batch=4, student_len=8, teacher_len=12, hidden=32, layers=1, heads=2, ffn=64, vocab=100,
                            iterations=10, lr=1e-2, freeze_word_embeddings=True)
  step = ref.make_reference_step(cfg)
  table = step.model.encoder.embeddings.word_embeddings.weight
  before = table.detach().clone()
  other = step.model.encoder.encoder.layer[0].intermediate.dense.weight.detach().clone()
  step(ref.synthetic_batch(cfg))
  assert table.grad is None and torch.equal(table, before)
  assert not torch.equal(step.model.encoder.encoder.layer[0].intermediate.dense.weight, other)
  config = config_lib.load_config("configs/tiny.py", ["student.freeze_word_embeddings=True"])
  assert ref.from_optical_config(config).freeze_word_embeddings
