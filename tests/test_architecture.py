"""The floors of docs/architecture.md hold: every import inside srlm (at a module's top or inside a function) goes
to its own package or to a lower floor, and every module is on a floor. Also the size limits a newcomer can read
by: no module over 500 lines, no function over 80, except the few listed below, which may only shrink."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"

# Known to be over the limits, with the size they may not grow past: none left.
LONG_MODULES: dict[str, int] = {}
LONG_FUNCTIONS: dict[str, int] = {}  # none left


def floors() -> list[list[str]]:
    text = (ROOT / "docs" / "architecture.md").read_text()
    block = re.search(r"<!-- floors -->(.*?)<!-- /floors -->", text, re.S).group(1)
    return [[unit.strip() for unit in line.split(":", 1)[1].split(",")]
            for line in block.strip().splitlines() if line.startswith("- ")]


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted((SRC / "srlm").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.ImportFrom):  # relative: resolved against the package
            found.append((node.lineno, "<relative>"))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
    return [(line, name) for line, name in found if name == "<relative>" or name.split(".")[0] == "srlm"]


def test_every_import_runs_down_the_floors():
    floor_of = {unit: i for i, units in enumerate(floors()) for unit in units}

    def unit(module: str) -> str:
        parts = module.split(".")
        for n in range(len(parts), 0, -1):
            if ".".join(parts[:n]) in floor_of:
                return ".".join(parts[:n])
        raise AssertionError(f"{module} is on no floor of docs/architecture.md")

    wrong = []
    for module, path in modules().items():
        here = unit(module)
        for line, target in imports(path):
            assert target != "<relative>", f"{path}:{line}: a relative import; srlm imports by full name"
            there = unit(target)
            if there != here and floor_of[there] <= floor_of[here]:
                wrong.append(f"{path.relative_to(SRC)}:{line}: {module} imports {target}, on "
                             f"{'its own floor' if floor_of[there] == floor_of[here] else 'a floor above'}")
    assert not wrong, "imports that run up (or across) a floor:\n" + "\n".join(wrong)


def test_the_floor_check_finds_an_upward_import(tmp_path):
    # The check above must be able to fail: a lower floor importing a higher one is found by the same walk.
    path = tmp_path / "m.py"
    path.write_text("def f():\n    from srlm.loop import run_loop\n")
    assert imports(path) == [(2, "srlm.loop")]
    order = {unit: i for i, units in enumerate(floors()) for unit in units}
    assert order["srlm.loop"] < order["srlm.io"]


def test_modules_and_functions_stay_readable():
    too_long = []
    for path in modules().values():
        name = str(path.relative_to(SRC))
        lines = len(path.read_text().splitlines())
        if lines > LONG_MODULES.get(name, 500):
            too_long.append(f"{name}: {lines} lines (limit {LONG_MODULES.get(name, 500)})")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = node.end_lineno - node.lineno + 1
                limit = LONG_FUNCTIONS.get(f"{name}:{node.name}", 80)
                if size > limit:
                    too_long.append(f"{name}:{node.lineno} {node.name}: {size} lines (limit {limit})")
    assert not too_long, "\n".join(too_long)
