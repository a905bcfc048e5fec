"""The core (``fdistill/``) imports downward only: never ``fdistill.training`` or ``fdistill.pipelines``.

The command line (``fdistill/cli.py``, ``fdistill/video_cli.py``) is the one declared top floor, which may
reach every package. Checked twice: statically (every import statement, also those inside functions) and
by importing every core module in a fresh process.
"""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "fdistill"
TOP_FLOOR = {"cli", "video_cli"}
UPPER = ("fdistill.training", "fdistill.pipelines")


def core_modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(CORE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts[-1] in TOP_FLOOR and len(parts) == 2:
            continue
        out.append((".".join(parts), path))
    return out


def imported_names(module: str, path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, relative ones resolved."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names += [(node.lineno, f"{base}.{alias.name}" if not node.module else base) for alias in node.names]
    return names


def test_core_modules_never_import_training_or_pipelines():
    found = [f"{path.relative_to(ROOT)}:{line} imports {name}"
             for module, path in core_modules() for line, name in imported_names(module, path)
             if name.startswith(UPPER)]
    assert not found, "upward imports in the core:\n" + "\n".join(found)


def test_the_static_check_sees_relative_and_function_level_imports(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("def f():\n    from ..training import trainer\n    import fdistill.pipelines\n")
    names = [n for _, n in imported_names("fdistill.eval.m", path)]
    assert "fdistill.training" in names and "fdistill.pipelines" in names


def test_importing_every_core_module_loads_no_training_or_pipelines():
    modules = [m for m, _ in core_modules()]
    code = (f"import importlib, sys\nfor m in {modules!r}:\n    importlib.import_module(m)\n"
            f"bad = sorted(m for m in sys.modules if m.startswith({UPPER!r}))\nprint(bad)\nassert not bad, bad\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
