"""The package's structure: no module imports another that imports it back,
and every error picogpt2 raises on purpose derives from ``PicoGPT2Error``,
the one class the commands catch."""

import ast
import importlib
import inspect
from pathlib import Path

import picogpt2
from picogpt2.errors import PicoGPT2Error

PACKAGE = Path(picogpt2.__file__).parent
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py"))


def imported_modules(module: str) -> set[str]:
    """picogpt2 modules that ``module`` imports anywhere (top level, inside
    functions, or only for type checkers), by name."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "picogpt2" and len(parts) > 1 and parts[1] in MODULES:
                found.add(parts[1])
    found.discard(module)
    return found


def test_no_import_cycles():
    graph = {m: imported_modules(m) for m in MODULES}
    assert graph["gpt2"] == set(), "the model imports nothing of picogpt2's"
    assert graph["errors"] == set() and graph["hparams"] <= {"errors"}

    def path_back(start: str, node: str, seen: tuple[str, ...]) -> tuple[str, ...] | None:
        for nxt in graph[node]:
            if nxt == start:
                return (*seen, nxt)
            if nxt not in seen:
                found = path_back(start, nxt, (*seen, nxt))
                if found:
                    return found
        return None

    for module in MODULES:
        cycle = path_back(module, module, (module,))
        assert cycle is None, " -> ".join(cycle)


def test_every_error_class_derives_from_the_one_base():
    errors = []
    for module in MODULES:
        if module == "__init__":
            continue
        loaded = importlib.import_module(f"picogpt2.{module}")
        for name, value in vars(loaded).items():
            if (
                inspect.isclass(value)
                and issubclass(value, Exception)
                and value.__module__ == loaded.__name__
                and not name.startswith("_")  # private control flow, never escapes
            ):
                errors.append(value)
    assert len(errors) >= 8
    assert all(issubclass(e, PicoGPT2Error) for e in errors), [
        e.__name__ for e in errors if not issubclass(e, PicoGPT2Error)
    ]
