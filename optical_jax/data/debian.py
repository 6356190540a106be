"""Debian packages as data: a pinned .deb, downloaded once from deb.debian.org and read in memory.

A `DebianPackage` names one .deb of the Debian pool with the sha256 and size that Debian's signed Packages index lists
for it. `fetch` downloads it into a cache directory (assets.default_cache_dir(), one subdirectory per
user of this module) over plain HTTP, so the pinned sha256 is what makes it trustworthy; `deb_files` reads files out
of its data.tar.* with the standard library only (ar + tar): no dpkg, no root. Users: lexicon.py (FreeDict
dictionaries), libreoffice.py (LibreOffice UI translations).
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import os
import pathlib
import tarfile
import urllib.error
import urllib.request
from collections.abc import Sequence

from optical_jax.errors import UserError

log = logging.getLogger("optical_jax")

DEBIAN_MIRROR = "http://deb.debian.org/debian"


@dataclasses.dataclass(frozen=True)
class DebianPackage:
  """One pinned .deb (sha256 and size from Debian's Packages index)."""
  package: str
  version: str    # as apt shows it, epoch included ("4:7.4.7-1+deb12u14")
  sha256: str
  size: int
  pool_path: str  # its directory under the mirror, e.g. "pool/main/f/freedict"

  @property
  def filename(self) -> str:
    # The pool's file names leave the epoch out.
    return f"{self.package}_{self.version.split(':', 1)[-1]}_all.deb"

  @property
  def url(self) -> str:
    return f"{DEBIAN_MIRROR}/{self.pool_path}/{self.filename}"


def sha256(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def fetch(pkg: DebianPackage, root: str | os.PathLike, *, label: str, timeout: float = 60.0) -> pathlib.Path:
  """The pinned .deb in directory `root`, downloaded (and sha256-checked) if missing; `label` names it in errors."""
  path = pathlib.Path(root) / pkg.filename
  if path.is_file() and sha256(path.read_bytes()) == pkg.sha256:
    return path
  log.info("fetching %s from %s (%d bytes, sha256 pinned)", pkg.package, pkg.url, pkg.size)
  try:
    with urllib.request.urlopen(pkg.url, timeout=timeout) as response:
      data = response.read()
  except (urllib.error.URLError, OSError) as e:
    raise UserError(f"{label}: cannot download {pkg.url} ({e}); fetch it by hand into {path}") from None
  check(pkg, data, pkg.url)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(f".tmp{os.getpid()}")
  tmp.write_bytes(data)
  tmp.replace(path)  # never a half-written file under the final name
  return path


def check(pkg: DebianPackage, data: bytes, where: str) -> bytes:
  """`data` if it is the pinned package, else a UserError naming `where` it came from."""
  got = sha256(data)
  if got != pkg.sha256:
    raise UserError(f"{where}: sha256 {got} does not match the pinned {pkg.sha256} of {pkg.filename} "
                    f"({len(data)} bytes)")
  return data


def read_ar(data: bytes) -> dict[str, bytes]:
  """Members of a Unix ar archive (a .deb): name -> contents."""
  if not data.startswith(b"!<arch>\n"):
    raise ValueError("not an ar archive")
  members, p = {}, 8
  while p + 60 <= len(data):
    header = data[p:p + 60]
    if header[58:60] != b"`\n":
      raise ValueError(f"bad ar member header at offset {p}")
    name = header[:16].decode("ascii").strip()
    size = int(header[48:58].decode("ascii").strip())
    p += 60
    members[name.rstrip("/")] = data[p:p + size]
    p += size + (size & 1)  # members are 2-byte aligned
  return members


def deb_files(deb: bytes, suffixes: Sequence[str]) -> dict[str, bytes]:
  """The files of a .deb's data.tar.* whose names end with one of `suffixes`: path -> contents."""
  members = read_ar(deb)
  data_name = next((n for n in members if n.startswith("data.tar")), None)
  if data_name is None:
    raise ValueError(f"no data.tar.* member in the .deb (members: {sorted(members)})")
  out = {}
  with tarfile.open(fileobj=io.BytesIO(members[data_name]), mode="r:*") as tar:
    for info in tar.getmembers():
      if info.isfile() and info.name.endswith(tuple(suffixes)):
        out[info.name.lstrip("./")] = tar.extractfile(info).read()
  return out
