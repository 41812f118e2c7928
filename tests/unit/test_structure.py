"""The house's size and shape rules, held by the code rather than remembered: no product module over 400 lines, no
function over 80 lines (the benchmark report's markdown builder excepted), no import cycle among product modules."""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("claimgate", "gateway", "worker", "loadtest")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80
# The benchmark report writes one long document top to bottom; the issue that set the rule exempts it.
LONG_FUNCTIONS_ALLOWED = {("loadtest/bench/report.py", "markdown")}


def product_modules() -> Iterator[Path]:
    for package in PRODUCT:
        yield from sorted((ROOT / package).rglob("*.py"))


def long_modules(paths: Iterable[Path], root: Path = ROOT) -> list[str]:
    return [
        f"{path.relative_to(root)}: {lines} lines"
        for path in paths
        if (lines := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    ]


def long_functions(paths: Iterable[Path], root: Path = ROOT) -> list[str]:
    found = []
    for path in paths:
        relative = str(path.relative_to(root))
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            lines = (node.end_lineno or node.lineno) - node.lineno + 1
            if lines > MAX_FUNCTION_LINES and (relative, node.name) not in LONG_FUNCTIONS_ALLOWED:
                found.append(f"{relative}:{node.lineno} {node.name}: {lines} lines")
    return found


def import_cycles(imports: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    for start in sorted(imports):
        if start in index:
            continue
        work = [(start, iter(sorted(imports.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, targets = work[-1]
            target = next(targets, None)
            if target is not None:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(imports.get(target, ())))))
                elif target in on_stack:
                    low[node] = min(low[node], index[target])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
    return cycles


def product_imports() -> dict[str, set[str]]:
    graph = grimp.build_graph(*PRODUCT, exclude_type_checking_imports=True)
    return {module: set(graph.find_modules_directly_imported_by(module)) for module in graph.modules}


def test_no_product_module_over_400_lines() -> None:
    assert long_modules(product_modules()) == []


def test_no_function_over_80_lines() -> None:
    assert long_functions(product_modules()) == []


def test_no_import_cycle_among_product_modules() -> None:
    assert import_cycles(product_imports()) == []


def test_the_checks_find_what_they_look_for(tmp_path: Path) -> None:
    long_module = tmp_path / "long.py"
    long_module.write_text("x = 1\n" * (MAX_MODULE_LINES + 1))
    long_function = tmp_path / "function.py"
    long_function.write_text("def f():\n" + "    x = 1\n" * MAX_FUNCTION_LINES)
    short = tmp_path / "short.py"
    short.write_text("def f():\n" + "    x = 1\n" * (MAX_FUNCTION_LINES - 1))
    assert long_modules([long_module, short], tmp_path) == ["long.py: 401 lines"]
    assert long_functions([long_function, short], tmp_path) == ["function.py:1 f: 81 lines"]
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []
