"""Test setup (runs before jax is imported anywhere): 8 simulated CPU devices and a persistent XLA compilation cache.

The cache is one directory shared by the xdist workers and by every `python -m optical_jax` process the tests start
(they inherit this environment), so a train step compiled by one of them is loaded, not recompiled, by the others.
It lives in <repo>/.pytest_cache/jax_compilation_cache (ignored by git), so repeated local runs start warm; CI clones
afresh and starts cold. OPTICAL_JAX_TEST_CACHE_DIR overrides the location; set it to "" to run with no cache.
Cache hits are transparent to what the tests check: jax still records a backend compile event (the load time) for
every executable it builds, and the jit caches that count recompilations are in-memory, per process.
"""
import importlib.util
import os
import pathlib

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
  if importlib.util.find_spec("filelock") is not None:
    # A size bound turns on jax's LRU eviction, which takes a file lock around every read and write: processes that
    # compile the same module at once then never read a half-written entry. 2 GB is ~10 full suite runs.
    os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(2 << 30))
