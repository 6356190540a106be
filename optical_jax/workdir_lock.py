"""One writer per workdir: a command that writes WORKDIR holds WORKDIR/.optical_jax.lock while it runs.

The lock is a small JSON file naming its holder: host, pid, command and start time (and, on Linux, the boot id and
the process start time, which tell a recycled pid or a rebooted machine from the original holder). A second run on
the same workdir reads it and refuses while the holder lives. A holder on this host whose process is gone (killed,
or the machine rebooted) left a stale lock: the next run takes it over with a warning naming it. A holder on
another host cannot be checked from here, so the next run refuses and says how to remove the lock.

Local paths: the file is created with O_CREAT|O_EXCL, so of two runs started together exactly one gets it, and a
stale lock is taken over by moving it aside first, so two runs taking over the same stale lock cannot both win.
gs:// and other epath URIs: epath has no exclusive create, so the lock is checked, written, then read back; two runs
started within the same second or so can both pass. There it stops the usual mistake (a second run on a live
workdir), not a race. The lock is released (deleted) on a normal exit, an exception or SIGTERM; a process killed
outright (kill -9, a lost host) leaves it behind.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import socket
import time
import uuid
from typing import Any

from etils import epath

from optical_jax.errors import UserError

log = logging.getLogger("optical_jax")
LOCK_NAME = ".optical_jax.lock"
_UNREADABLE_WAIT_S = 2.0  # a lock read between its exclusive create and its write is empty for microseconds
_HELD: list[WorkdirLock] = []  # for release_all: a process that ends with os._exit skips every `with` exit


def _read_first_line(path: str) -> str | None:
  try:
    with open(path) as f:
      return f.readline().strip() or None
  except OSError:
    return None


def _process_start(pid: int) -> str | None:
  """Start time of `pid` in clock ticks since boot (Linux), or None: with the pid, it names one process."""
  stat = _read_first_line(f"/proc/{pid}/stat")
  if stat is None:
    return None
  return stat.rsplit(")", 1)[-1].split()[19]  # field 22; the fields after the "(comm)" start at field 3


def describe(holder: dict[str, Any]) -> str:
  return f"`{holder.get('command')}` (host {holder.get('host')}, pid {holder.get('pid')}, since {holder.get('since')})"


def _valid(holder: Any) -> bool:
  return (isinstance(holder, dict) and isinstance(holder.get("host"), str) and isinstance(holder.get("pid"), int)
          and holder["pid"] > 0)


def is_alive(holder: dict[str, Any]) -> bool:
  """Whether the process named by a lock of this host still runs."""
  boot_id = _read_first_line("/proc/sys/kernel/random/boot_id")
  if holder.get("boot_id") and boot_id and holder["boot_id"] != boot_id:
    return False  # the machine rebooted since
  pid = holder["pid"]
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass  # it exists, under another user
  start = _process_start(pid)
  return not (holder.get("pid_start") and start and start != holder["pid_start"])  # else the pid was recycled


class WorkdirLock:
  """`with WorkdirLock(workdir, "train"):` holds the workdir's lock for the block, or raises UserError (exit 2)."""

  def __init__(self, workdir: str, command: str):
    self.workdir = str(workdir)
    self.path = epath.Path(workdir) / LOCK_NAME
    self._local = "://" not in self.workdir
    self._held = False
    self.holder = {
        "host": socket.gethostname(), "pid": os.getpid(), "command": command,
        "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "boot_id": _read_first_line("/proc/sys/kernel/random/boot_id"), "pid_start": _process_start(os.getpid()),
        "token": uuid.uuid4().hex}

  def __enter__(self) -> WorkdirLock:
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()

  def acquire(self) -> None:
    epath.Path(self.workdir).mkdir(parents=True, exist_ok=True)
    if self._local:
      self._acquire_local()
    else:
      self._acquire_remote()
    self._held = True
    _HELD.append(self)

  def release(self) -> None:
    """Deletes the lock if it is still ours (never a lock some other run has taken over)."""
    if not self._held:
      return
    self._held = False
    _HELD.remove(self)
    try:
      if self._parse(self.path.read_text()).get("token") == self.holder["token"]:
        self.path.unlink()
    except (OSError, ValueError) as e:  # Must not hide the error that is ending the command, if any.
      log.warning("%s: could not remove the lock %s (%s); the next run on this host takes it over", self.workdir,
                  self.path, e)

  def _acquire_local(self) -> None:
    content = json.dumps(self.holder, indent=1) + "\n"
    for _ in range(5):
      try:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
      except FileExistsError:
        holder = self._read_holder()
        self._refuse_unless_stale(holder)
        self._take_over_local(holder)
        continue
      with os.fdopen(fd, "w") as f:
        f.write(content)
        f.flush()
        os.fsync(f.fileno())
      return
    raise UserError(f"{self.workdir}: other runs keep taking {self.path} at the same time as this one; start one")

  def _take_over_local(self, stale: dict[str, Any]) -> None:
    # Moved aside, not deleted: a run that took the stale lock over just before us has replaced the file with its
    # own, and deleting by name would delete that live lock too. What was moved is checked, and put back if live.
    aside = self.path.parent / f"{LOCK_NAME}.stale-{self.holder['token']}"
    try:
      os.rename(self.path, aside)
    except FileNotFoundError:
      return  # another run moved it first; the next create decides
    moved = self._parse(aside.read_text())
    if moved != stale:
      try:
        os.link(aside, self.path)
      except FileExistsError:
        pass
      aside.unlink()
      return
    aside.unlink()
    log.warning("%s: taking over the lock of %s, which is no longer running", self.workdir, describe(stale))

  def _acquire_remote(self) -> None:
    if self.path.exists():
      holder = self._read_holder()
      self._refuse_unless_stale(holder)
      log.warning("%s: taking over the lock of %s, which is no longer running", self.workdir, describe(holder))
    self.path.write_text(json.dumps(self.holder, indent=1) + "\n")
    # No exclusive create on an object store: of two runs that wrote at once, the one read back wins.
    now = self._parse(self.path.read_text())
    if now.get("token") != self.holder["token"]:
      raise UserError(f"{self.workdir}: in use by {describe(now)}, which started at the same time; wait for it or "
                      "stop it")

  def _read_holder(self) -> dict[str, Any]:
    deadline = time.monotonic() + _UNREADABLE_WAIT_S
    while True:
      try:
        holder = self._parse(self.path.read_text())
        if _valid(holder):
          return holder
        cause = "not a lock written by optical-jax"
      except FileNotFoundError:
        return {}  # released meanwhile: nothing to refuse
      except (OSError, ValueError) as e:
        cause = str(e)
      if time.monotonic() > deadline:
        raise UserError(f"{self.workdir}: cannot read its lock {self.path} ({cause}); if no run is using this "
                        f"workdir, delete {self.path}")
      time.sleep(0.1)

  def _refuse_unless_stale(self, holder: dict[str, Any]) -> None:
    if not holder:
      return
    if holder["host"] != self.holder["host"]:
      raise UserError(f"{self.workdir}: in use by {describe(holder)}, on another host, so this one cannot tell "
                      f"whether it still runs; if you are sure it has stopped, delete {self.path}")
    if is_alive(holder):
      raise UserError(f"{self.workdir}: in use by {describe(holder)}; wait for it or stop it")

  @staticmethod
  def _parse(text: str) -> dict[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict):
      raise ValueError("not a JSON object")
    return value


def release_all() -> None:
  """Releases every lock this process holds: for exits that skip the `with` blocks (distributed.exit_now)."""
  for lock in list(_HELD):
    lock.release()
