"""The README's "Project layout" stays true: it names every module, and imports only point down
(``cli``, ``flows`` -> ``tasks`` -> ``ssl_models``), as it says."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("cli", "flows", "tasks", "ssl_models")
# what each layer must not import (at any depth, inside functions too)
FORBIDDEN = {
    "flows": ("cli",),
    "tasks": ("cli", "flows", "prefect"),  # DVC runs the stages outside any flow
    "ssl_models": ("cli", "flows", "tasks", "prefect", "mlflow", "dvc", "ray"),  # pure PyTorch
}


def layout_section(readme: str) -> str:
    match = re.search(r"^## Project layout\n(.*?)(?=^## )", readme, flags=re.S | re.M)
    assert match, "README.md has no '## Project layout' section followed by another section"
    return match.group(1)


def unnamed_modules(root: Path) -> list[str]:
    """The modules (top-level files) and subpackages of each package that the README's layout
    section does not name in backticks (``name.py``, ``name/``)."""
    section = layout_section((root / "README.md").read_text())
    named = set(re.findall(r"`([^`]+)`", section))
    missing = []
    for package in PACKAGES:
        for path in sorted((root / package).iterdir()):
            if path.suffix == ".py" and path.name != "__init__.py" and path.name not in named:
                missing.append(f"{package}/{path.name}")
            elif (path / "__init__.py").exists() and f"{path.name}/" not in named:
                missing.append(f"{package}/{path.name}/")
    return missing


def upward_imports(root: Path) -> list[str]:
    """``file:line imports name`` for every import a layer must not make."""
    found = []
    for package, forbidden in FORBIDDEN.items():
        for path in sorted((root / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                found += [f"{path.relative_to(root)}:{node.lineno} imports {name}" for name in names
                          if name.split(".")[0] in forbidden]
    return sorted(found)


def test_the_readme_layout_names_every_module():
    missing = unnamed_modules(REPO)
    assert not missing, f"name these in README.md's 'Project layout' section: {missing}"


def test_the_readme_layout_names_every_command():
    import typer.main

    from cli import app

    section = layout_section((REPO / "README.md").read_text())
    commands = sorted(typer.main.get_command(app).commands)
    assert len(commands) >= 9, commands
    assert not [c for c in commands if f"`{c}" not in section], commands  # `server start/stop/status` names server


def test_imports_only_point_down():
    upward = upward_imports(REPO)
    assert not upward, f"imports must point down (cli, flows -> tasks -> ssl_models): {upward}"


def _tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_the_checks_report_an_unnamed_module_and_an_upward_import(tmp_path: Path):
    files = {f"{p}/__init__.py": "" for p in PACKAGES}
    files |= {"ssl_models/losses/__init__.py": "", "ssl_models/engine.py": "import torch\n",
              "tasks/stage.py": "def f():\n    from flows.pipeline import pipeline\n",
              "flows/pipeline.py": "from tasks import stage\n",
              "README.md": "## Project layout\n`engine.py`, `stage.py`, `pipeline.py`\n## Tests\n`losses/`\n"}
    _tree(tmp_path, files)
    assert unnamed_modules(tmp_path) == ["ssl_models/losses/"]  # named only outside the section
    assert upward_imports(tmp_path) == ["tasks/stage.py:2 imports flows.pipeline"]
    (tmp_path / "ssl_models" / "engine.py").write_text("import mlflow, torch\n")
    assert upward_imports(tmp_path) == ["ssl_models/engine.py:1 imports mlflow",
                                        "tasks/stage.py:2 imports flows.pipeline"]
