"""The package's import graph: no cycle (lazy imports inside functions included), and no module imports one of the
orchestrating commands above it. Data flows bitext -> teacher store -> join -> pipeline -> step."""
import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "optical_jax"
# Modules that run a command end to end: nothing below them may import them.
ORCHESTRATORS = ("optical_jax.cli", "optical_jax.train", "optical_jax.precompute", "optical_jax.evaluate",
                 "optical_jax.export", "optical_jax.demo", "optical_jax.bench", "optical_jax.index_search",
                 "optical_jax.experiment", "optical_jax.pretrain")
# Who may import an orchestrator (its own package, and the commands above it).
ALLOWED_ABOVE = {
    "optical_jax.cli": ("optical_jax.__main__",),
    "optical_jax.train": ("optical_jax.cli", "optical_jax.demo", "optical_jax.experiment"),
    "optical_jax.precompute": ("optical_jax.cli", "optical_jax.demo", "optical_jax.experiment"),
    "optical_jax.evaluate": ("optical_jax.cli", "optical_jax.demo", "optical_jax.experiment"),
    "optical_jax.export": ("optical_jax.cli", "optical_jax.demo", "optical_jax.evaluate", "optical_jax.index_search"),
    "optical_jax.demo": ("optical_jax.cli",),
    "optical_jax.bench": ("optical_jax.cli",),
    "optical_jax.index_search": ("optical_jax.cli",),
    "optical_jax.experiment": ("optical_jax.cli",),
    "optical_jax.pretrain": ("optical_jax.cli", "optical_jax.experiment"),
}


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
  """module -> the optical_jax modules it imports, anywhere in its body."""
  modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
  graph = {}
  for name, path in modules.items():
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      if isinstance(node, ast.Import):
        targets.update(a.name for a in node.names)
      elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        # `from optical_jax.data import tokens` imports the module optical_jax.data.tokens.
        targets.update(f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                       for a in node.names)
    graph[name] = {t for t in targets if t in modules and t != name}
  return graph


def _under(module: str, package: str) -> bool:
  return module == package or module.startswith(package + ".")


def test_no_import_cycle():
  graph = import_graph()
  state: dict[str, int] = {}
  stack: list[str] = []

  def visit(node):
    state[node] = 1
    stack.append(node)
    for nxt in sorted(graph[node]):
      if state.get(nxt) == 1:
        pytest.fail("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
      if nxt not in state:
        visit(nxt)
    stack.pop()
    state[node] = 2

  for node in sorted(graph):
    if node not in state:
      visit(node)


def test_no_upward_import_of_a_command():
  graph = import_graph()
  for module, targets in graph.items():
    for target in targets:
      for command in ORCHESTRATORS:
        if _under(target, command) and not _under(module, command):
          assert any(_under(module, ok) for ok in ALLOWED_ABOVE[command]), f"{module} imports {target}"


def test_init_files_hold_no_logic():
  for path in PACKAGE.rglob("__init__.py"):
    tree = ast.parse(path.read_text())
    defs = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))]
    assert not defs, f"{path}: defines {[d.name for d in defs]}"
