"""A .deb built in memory, as Debian lays one out: ar(debian-binary, control.tar.xz, data.tar.xz)."""
import io
import tarfile


def deb_bytes(files: dict[str, bytes]) -> bytes:
  """A .deb whose data.tar.xz holds `files` (path -> contents)."""
  tar_buf = io.BytesIO()
  with tarfile.open(fileobj=tar_buf, mode="w:xz") as tar:
    for path, content in files.items():
      info = tarfile.TarInfo(path)
      info.size = len(content)
      tar.addfile(info, io.BytesIO(content))
  out = b"!<arch>\n"
  for member, content in (("debian-binary", b"2.0\n"), ("control.tar.xz", b"x"), ("data.tar.xz", tar_buf.getvalue())):
    out += f"{member:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(content):<10}`\n".encode() + content
    out += b"\n" if len(content) % 2 else b""  # ar members are 2-byte aligned
  return out
