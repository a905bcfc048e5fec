"""README.md and the results page it links (docs/results.md) run as printed: every shell command and Python
snippet (tests/readme_commands.py), README first."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from readme_commands import APPENDED, SKIPPED, Command, as_run, readme_commands

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = (README, ROOT / "docs" / "results.md")
COMMANDS = readme_commands(*DOCS)
TIMEOUT_S = 600


def test_the_readme_links_each_page_the_suite_runs():
    text = README.read_text()
    assert all(f"]({doc.relative_to(ROOT)})" in text for doc in DOCS[1:])


def test_readme_has_commands_and_the_override_lists_are_current():
    texts = {c.text for c in COMMANDS}
    assert any(c.kind == "python" for c in COMMANDS) and any(c.kind == "shell" for c in COMMANDS)
    stale = sorted(set(APPENDED) - texts) + sorted(set(SKIPPED) - texts)
    assert not stale, f"tests/readme_commands.py names commands the README no longer prints: {stale}"


def test_extraction_rules(tmp_path):
    md = tmp_path / "R.md"
    md.write_text("Run `python scripts/x.py --a 1` or `fdistill.kernels` (not a command).\n"
                  "```bash\nmake demo   # a comment\n            # continued comment\nfdistill eval \\\n  --n 2\n```\n"
                  "```\nplain output, not run\n```\n"
                  "```python\nimport os\nprint(os.sep)\n```\n"
                  "Again `make demo` and `scripts/train.sh digits`.\n")
    got = readme_commands(md)
    assert [(c.kind, c.text) for c in got] == [
        ("shell", "python scripts/x.py --a 1"), ("shell", "make demo"), ("shell", "fdistill eval --n 2"),
        ("python", "import os\nprint(os.sep)\n"), ("shell", "scripts/train.sh digits")]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """A copy of what README commands read (Makefile, pyproject.toml, configs/, scripts/, fdistill/assets/)."""
    work = tmp_path_factory.mktemp("readme")
    for name in ("Makefile", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, work / name)  # copy2 keeps mtimes: make sees the installed stamp as fresh
    for name in ("configs", "scripts", "fdistill/assets", "docs"):
        shutil.copytree(ROOT / name, work / name)
    return work


def _env() -> dict[str, str]:
    venv_bin = Path(sys.executable).parent
    return {**os.environ, "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
            "VENV": str(venv_bin.parent), "PYTHON": sys.executable, "PY": sys.executable,
            "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}


@pytest.mark.parametrize("command", COMMANDS, ids=[f"{Path(c.doc).stem}:L{c.line}" for c in COMMANDS])
def test_readme_command_runs(command: Command, scratch: Path):
    if command.kind == "python":
        # not in the scratch root: its fdistill/assets/ copy would shadow the installed package on sys.path[0]
        script = scratch / "readme_snippets" / f"snippet_{Path(command.doc).stem}_L{command.line}.py"
        script.parent.mkdir(exist_ok=True)
        script.write_text(command.text)
        argv, shell = [sys.executable, str(script)], False
    else:
        run = as_run(command)
        if run is None:
            pytest.skip(f"{command.text!r}: {SKIPPED[command.text]}")
        argv, shell = run, True
    res = subprocess.run(argv, shell=shell, cwd=scratch, env=_env(), capture_output=True, text=True,
                         timeout=TIMEOUT_S, executable="/bin/bash" if shell else None)
    assert res.returncode == 0, (f"{command.doc} line {command.line} failed (exit {res.returncode}):\n{command.text}\n"
                                 f"--- stdout ---\n{res.stdout[-3000:]}\n--- stderr ---\n{res.stderr[-3000:]}")


def test_readme_lists_every_divergence_the_registry_accepts():
    from fdistill.divergences import ALIASES, available_divergences

    text = README.read_text()
    missing = [name for name in [*available_divergences(), *ALIASES] if f"`{name}`" not in text]
    assert not missing, f"README does not list {missing}"
