"""SIGTERM as a request to stop: the training loops (train, pretrain) save one checkpoint and return (exit 0), so a
preempted or rescheduled job resumes where it stopped."""
import logging
import signal

log = logging.getLogger("optical_jax")


class StopRequested:
  """Set by SIGTERM (preemption notice) so the loop can save one checkpoint and exit 0."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    def handler(signum, frame):
      del frame
      log.warning("signal %d received: saving a checkpoint and stopping", signum)
      self.requested = True
    try:
      self._previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # Not the main thread (e.g. under some test runners): no signal handling.
      self._previous = None
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
