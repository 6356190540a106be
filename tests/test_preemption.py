"""Coordinated preemption of a 2-process run: SIGTERM to one process stops both at one step; kill -9 ends both.

Uses the helpers and the shared uninterrupted 2-process run of tests/test_multiprocess.py.
"""
import json
import signal

import numpy as np

from test_multiprocess import ARGS, STEPS, check_ok, compilation_cache, exported_weights, finish, launch
from test_multiprocess import metrics_rows, multiprocess, two_process_run, wait_for_checkpoint

__all__ = ["compilation_cache", "two_process_run"]  # pytest fixtures, used by name


@multiprocess
def test_sigterm_to_one_process_stops_both_at_one_step_and_resume_is_bit_identical(two_process_run, tmp_path):
  workdir = tmp_path / "interrupted"
  procs = launch(workdir, *ARGS)
  wait_for_checkpoint(workdir, procs, 10, started=True)
  # Freezing process 0 holds process 1 within a step or two of it (it waits in the next collective), so the signal
  # lands mid-run however fast the steps are.
  procs[0].send_signal(signal.SIGSTOP)
  procs[1].send_signal(signal.SIGTERM)  # Not the lead: process 0 learns of it only through the vote.
  procs[0].send_signal(signal.SIGCONT)
  results = finish(procs, timeout=120)
  check_ok(results)
  stops = [json.loads(out.strip().splitlines()[-1])["final_step"] for _, out, _ in results]
  assert stops[0] == stops[1] and 10 < stops[0] < STEPS, stops
  assert (workdir / "checkpoints" / str(stops[0])).exists()
  assert f"stopping at step {stops[0]}" in results[0][2]

  results = finish(launch(workdir, *ARGS))
  check_ok(results)
  assert all(json.loads(out.strip().splitlines()[-1])["start_step"] == stops[0] for _, out, _ in results)
  assert [r["step"] for r in metrics_rows(workdir)] == sorted({*range(5, STEPS + 1, 5), stops[0]})
  a, b = exported_weights((two_process_run, tmp_path / "hf_reference"), (workdir, tmp_path / "hf_resumed"))
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@multiprocess
def test_kill9_of_one_process_ends_the_other_within_the_heartbeat_timeout(tmp_path):
  workdir = tmp_path / "killed"
  procs = launch(workdir, *ARGS, env={"OPTICAL_JAX_HEARTBEAT_TIMEOUT": "10"})
  wait_for_checkpoint(workdir, procs, 10)
  procs[1].kill()
  # finish() fails the test if process 0 is still running after 90 s (heartbeat timeout 10 s + start-up slack).
  (code, _, err), (killed, _, _) = finish(procs, timeout=90)
  assert killed == -signal.SIGKILL
  assert code != 0
  # Our message if the failure reached Python, else jax's own after the heartbeat timeout, preceded by our warning.
  assert "optical-jax: error: process 0 of 2" in err or "another task died" in err, err[-4000:]
