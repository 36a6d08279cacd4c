"""The project's modules import one way (entry scripts -> utils/ -> datasets/ -> env/, models/): no module imports
one that imports it back, directly or through others, and the deploy seam loads no training code."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("utils", "datasets", "env", "models")


def project_imports() -> dict[str, set[str]]:
    """{module: the project modules it imports, at the top or inside functions}, e.g. utils.training -> ..."""
    graph = {}
    for path in [*REPO.glob("*.py"), *(p for package in PACKAGES for p in (REPO / package).glob("*.py"))]:
        module = ".".join(path.relative_to(REPO).with_suffix("").parts)
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            imported |= {name for name in names if name.split(".")[0] in PACKAGES}
        graph[module] = imported - {module}
    return graph


def reachable(graph: dict, start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_no_module_imports_one_that_imports_it_back():
    graph = project_imports()
    circles = sorted(module for module in graph if module in reachable(graph, module))
    assert not circles, f"modules on an import circle: {circles}"


def test_imports_run_one_way_and_deploy_needs_no_training_code():
    graph = project_imports()
    layer = {"utils": 0, "datasets": 1, "env": 2, "models": 2}
    for module, imports in graph.items():
        if "." not in module or module.split(".")[0] not in layer:
            continue  # entry scripts import anything below them
        for imported in imports:
            if imported != "env.errors":  # the one exception type every layer raises
                assert layer[imported.split(".")[0]] >= layer[module.split(".")[0]], f"{module} imports {imported}"
    training = {"utils.training", "utils.run_setup", "utils.optimization", "utils.training_checkpoints",
                "utils.evaluation"}
    assert not reachable(graph, "utils.deploy") & training


if __name__ == "__main__":  # print the graph: python tests/test_import_graph.py
    for module, imports in sorted(project_imports().items()):
        print(f"{module:32} -> {', '.join(sorted(imports)) or '-'}")
