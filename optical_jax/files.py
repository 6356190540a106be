"""Small-file writes that never leave a half-written file behind (config.json, metrics, store manifests)."""
from __future__ import annotations

import os

from etils import epath


def write_text_atomic(path: epath.Path, text: str) -> None:
  """Writes PATH.tmp, then renames it over PATH: a full disk or a crash leaves the old file whole."""
  path = epath.Path(path)
  tmp = path.parent / (path.name + ".tmp")
  tmp.write_text(text)
  if "://" not in str(tmp):
    # Else a crash of the machine soon after can leave the renamed file empty.
    fd = os.open(tmp, os.O_RDONLY)
    try:
      os.fsync(fd)
    finally:
      os.close(fd)
  tmp.replace(path)
