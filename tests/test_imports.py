"""No import circles inside the library: layers import downward only (docs/architecture.md)."""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _module_name(path: str) -> str:
  relative = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
  return relative[:-len(".__init__")] if relative.endswith(".__init__") else relative


def _import_graph() -> dict[str, set[str]]:
  """Module -> the selfimprove modules it imports anywhere in its body (functions included)."""
  graph = {}
  for folder, _, files in os.walk(os.path.join(ROOT, "selfimprove")):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(folder, name)
        module = _module_name(path)
        edges = set()
        for node in ast.walk(ast.parse(open(path).read())):
          targets = []
          if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
          elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
          for target in targets:
            parts = target.split(".")
            # Importing a.b.c runs a/__init__ and a/b/__init__ too.
            edges |= {".".join(parts[:i]) for i in range(2, len(parts) + 1)}
        graph[module] = {e for e in edges if e.startswith("selfimprove.") and e != module}
  return {m: {e for e in edges if e in graph} for m, edges in graph.items()}


def _find_cycle(graph):
  state, stack = {}, []

  def visit(node):
    state[node] = "open"
    stack.append(node)
    for nxt in sorted(graph[node]):
      if state.get(nxt) == "open":
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in state and (cycle := visit(nxt)):
        return cycle
    stack.pop()
    state[node] = "done"
    return None

  for node in sorted(graph):
    if node not in state and (cycle := visit(node)):
      return cycle
  return None


def test_no_import_circles():
  graph = _import_graph()
  assert "selfimprove.train" in graph and "selfimprove.models.lora" in graph
  # A parent package importing its own submodules (a registry) is not a circle unless a
  # submodule imports back into the package's __init__ names, which the walk would show.
  cycle = _find_cycle({m: {e for e in edges if not m.startswith(e + ".")}
                       for m, edges in graph.items()})
  assert cycle is None, " -> ".join(cycle)
