"""The package's structure, as docs/layout.md states it: the reading path
and the commands on top, everything else in a folder named for its job; no
import cycles; the forward pass loads nothing but its own state; commands
are leaves (nothing imports one, and only they and the ``cli`` package know
argparse or ``cli``); and every error picogpt2 raises on purpose derives
from ``PicoGPT2Error``, the one class the commands catch."""

import ast
import importlib
import inspect
import json
import subprocess
import sys
from pathlib import Path

import picogpt2
from picogpt2.util.errors import PicoGPT2Error

PACKAGE = Path(picogpt2.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
COMMANDS = {name for name, path in MODULES.items() if "\ndef main(" in path.read_text()}


def imports(module: str) -> set[str]:
    """picogpt2 modules that ``module`` imports anywhere (top level, inside
    functions, or only for type checkers), as dotted names."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from package import module` imports that module; names that are
            # not modules come from the package itself.
            inner = [f"{node.module}.{a.name}" for a in node.names]
            names = [n for n in inner if n in MODULES] or [node.module]
            if len(names) < len(inner):
                names.append(node.module)
        else:
            continue
        found |= {name for name in names if name in MODULES}
    found.discard(module)
    return found


GRAPH = {module: imports(module) for module in MODULES}


def test_the_commands_are_the_ones_the_readme_names():
    names = {"generate", "download", "dump", "score", "compare", "tokens", "export", "fixture"}
    assert COMMANDS == {f"picogpt2.{name}" for name in names}


def test_no_import_cycles():
    def path_back(start: str, node: str, seen: tuple[str, ...]) -> tuple[str, ...] | None:
        for nxt in GRAPH[node]:
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


TOP_LEVEL = {"__init__.py", "gpt2.py", "state.py", "sampling.py", "generation.py", "encoder.py",
             "model.py", "hparams.py", "activations.py", "generate.py", "download.py", "dump.py",
             "score.py", "compare.py", "tokens.py", "export.py", "fixture.py"}  # fmt: skip
FOLDERS = {"weights", "oracle", "scoring", "util", "cli", "fastpath"}


def test_the_top_level_is_the_reading_path_and_the_commands():
    files = {p.name for p in PACKAGE.iterdir() if p.is_file()}
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert files == TOP_LEVEL and len(files) <= 17
    assert folders == FOLDERS
    assert all((PACKAGE / f / "__init__.py").is_file() for f in FOLDERS)


def loaded_by(module: str) -> list[str]:
    """The picogpt2, requests and regex modules that importing ``module``
    loads, measured in a fresh interpreter."""
    code = (f"import {module}, sys, json; print(json.dumps(sorted(m for m in sys.modules "
            "if m.split('.')[0] in ('picogpt2', 'requests', 'regex'))))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=PACKAGE.parent, check=True)  # fmt: skip
    return json.loads(out.stdout)


def test_the_spec_imports_nothing_it_does_not_use():
    assert loaded_by("picogpt2.gpt2") == ["picogpt2", "picogpt2.gpt2", "picogpt2.state"]
    assert loaded_by("picogpt2") == ["picogpt2"]  # lazy: GPT2 and load_model on first use
    assert not any(m.startswith(("requests", "regex")) for m in loaded_by("picogpt2.sampling"))


def test_the_forward_pass_imports_only_its_own_state():
    assert GRAPH["picogpt2.gpt2"] == {"picogpt2.state"}
    assert GRAPH["picogpt2.state"] == GRAPH["picogpt2.hparams"] == set()
    assert GRAPH["picogpt2.util.errors"] == set()


def test_commands_are_leaves():
    for module, imported in GRAPH.items():
        assert not imported & COMMANDS, f"{module} imports the command {imported & COMMANDS}"
        if module not in COMMANDS and not module.startswith("picogpt2.cli"):
            cli = {m for m in imported if m.startswith("picogpt2.cli")}
            assert not cli, f"{module} imports {cli}: the library knows no command line"


def test_only_commands_and_the_cli_helper_know_argparse():
    for module, path in MODULES.items():
        if module in COMMANDS or module == "picogpt2.cli.arguments":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = {a.name for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)
                 for a in node.names} | {node.module for node in ast.walk(tree)
                                         if isinstance(node, ast.ImportFrom)}  # fmt: skip
        assert "argparse" not in names, module


def test_only_generate_runs_as_a_file():
    # `python picogpt2/generate.py` is documented; every other command runs with -m.
    for module, path in MODULES.items():
        text = path.read_text(encoding="utf-8")
        runs_as_file = "__package__ in (None, " in text or "noqa: E402" in text
        assert runs_as_file == (module == "picogpt2.generate"), module


def test_every_error_class_derives_from_the_one_base():
    errors = {}
    for module in MODULES:
        loaded = importlib.import_module(module)
        for name, value in vars(loaded).items():
            if (
                inspect.isclass(value)
                and issubclass(value, Exception)
                and value.__module__ == loaded.__name__
                and not name.startswith("_")  # private control flow, never escapes
            ):
                errors[name] = value
    # The errors the README and the code's users meet, each found by this walk.
    assert {"InputError", "WeightsError", "FormatError", "DamagedWeightsError", "DownloadError",
            "CheckpointError", "HParamsError", "EncoderFileError", "UnknownTokenError",
            "BackendError"} <= errors.keys()  # fmt: skip
    assert all(issubclass(e, PicoGPT2Error) for e in errors.values()), [
        name for name, e in errors.items() if not issubclass(e, PicoGPT2Error)
    ]
