"""dvc.yaml tells the truth about staleness: each stage's ``deps`` cover every project module that
``sslpipe stage NAME`` imports (transitively, module- and function-level imports alike) and every
file the stage reads, so that editing any of them makes DVC call the stage stale.

Everything is derived from the code as it is when the test runs, by parsing files with ``ast``
(no imports of the project, no torch, no subprocess):

- the stage's modules: the runner (``RUNNER``) plus the module(s) it dispatches ``NAME`` to,
  found in the runner's source either as ``if name == "NAME": from tasks.X import ...`` branches
  or as a mapping such as ``STAGE_MODULES = {"NAME": "tasks.X", ...}``;
- the closure of project-internal imports from there (``import a.b``, ``from a.b import c`` where
  ``c`` may be a submodule, relative imports; importing ``a.b`` imports ``a/__init__.py`` too);
- the files a stage reads: every ``paths.NAME`` the stage module (and the ``LOADERS`` functions
  it imports) refers to outside f-strings, evaluated from ``tasks/paths.py``'s source; paths under
  ``paths.STATE`` are scratch (checkpoints, Ray results, downloads), not results.

The CLI (``sslpipe stage``) is a thin shell around the runner and is deliberately not a dep:
changing a command-line flag must not re-run training.
"""

from __future__ import annotations

import ast
import copy
import re
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from tests.conftest import REPO

RUNNER = "tasks.runner"  # what `sslpipe stage NAME` calls; every stage's closure starts here
PATHS = "tasks.paths"  # the constants naming what stages read and write
# Loaders: functions whose reads count for each stage whose module imports them (``load_dataset``
# reads data/dataset and reports/validation.json). Only importers of the function itself: ingest
# imports tasks.dataset for a helper and must not depend on validate's report (a cycle).
LOADERS = {"tasks.dataset": ("load_dataset",)}
FORBIDDEN_IMPORTS = ("prefect",)  # stage code runs under DVC, outside any flow

# ----------------------------------------------------------------------------------- the code
@dataclass
class Import:
    module: str  # the module doing the import
    target: str  # a project module, or an external top-level name
    line: int


@dataclass
class Project:
    """A source tree: its top-level packages (directories with ``__init__.py``) and their modules."""

    root: Path
    packages: set[str] = field(init=False)
    _trees: dict[str, ast.Module] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.packages = {p.parent.name for p in self.root.glob("*/__init__.py")}

    def file(self, module: str) -> Path | None:
        base = self.root.joinpath(*module.split("."))
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
        return None

    def rel(self, module: str) -> str:
        return self.file(module).relative_to(self.root).as_posix()

    def tree(self, module: str) -> ast.Module:
        if module not in self._trees:
            path = self.file(module)
            self._trees[module] = ast.parse(path.read_text(), filename=str(path))
        return self._trees[module]

    def is_package(self, module: str) -> bool:
        return self.file(module).name == "__init__.py"

    def imports(self, module: str, skip: frozenset[int] = frozenset()) -> tuple[list[Import], list[Import], list[str]]:
        """(project imports, external imports, problems) of ``module``, at any depth of its code,
        except the import statements whose ``id`` is in ``skip``."""
        internal: list[Import] = []
        external: list[Import] = []
        problems: list[str] = []

        def add(name: str, line: int) -> None:
            """``name`` and each package above it (importing a.b.c runs a, a.b and a.b.c)."""
            parts = name.split(".")
            if parts[0] not in self.packages:
                external.append(Import(module, parts[0], line))
                return
            for i in range(1, len(parts) + 1):
                prefix = ".".join(parts[:i])
                if self.file(prefix) is None:
                    problems.append(f"{self.rel(module)}:{line}: imports {name}, but {prefix} is no module here")
                    return
                internal.append(Import(module, prefix, line))

        for node in ast.walk(self.tree(module)):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                for alias in node.names:
                    add(alias.name, node.lineno)
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: from the package holding this module
                    package = module.split(".") if self.is_package(module) else module.split(".")[:-1]
                    package = package[: len(package) - (node.level - 1)]
                    base = ".".join(package + ([node.module] if node.module else []))
                else:
                    base = node.module
                add(base, node.lineno)
                if base.split(".")[0] in self.packages:
                    for alias in node.names:  # `from a import b` where b is a submodule
                        if alias.name != "*" and self.file(f"{base}.{alias.name}") is not None:
                            internal.append(Import(module, f"{base}.{alias.name}", node.lineno))
        return internal, external, problems


@dataclass
class Closure:
    modules: dict[str, Import | None]  # module -> the import that first reached it (None: a root)
    external: list[Import]
    problems: list[str]

    def chain(self, module: str, project: Project) -> str:
        """``tasks/runner.py -> tasks/config.py:106 -> ...``: how ``module`` came in."""
        steps = []
        while (via := self.modules[module]) is not None:
            steps.append(f"{project.rel(module)} (imported by {project.rel(via.module)}:{via.line})")
            module = via.module
        steps.append(f"{project.rel(module)} (run by `sslpipe stage`)")
        return " <- ".join(steps)


def closure(project: Project, roots: list[str], skip: frozenset[int] = frozenset()) -> Closure:
    """Every project module ``roots`` import, transitively (breadth first: shortest chains),
    leaving out the import statements in ``skip`` (the runner's branches for other stages)."""
    modules: dict[str, Import | None] = {r: None for r in roots}
    external: list[Import] = []
    problems: list[str] = []
    queue = deque(roots)
    while queue:
        module = queue.popleft()
        internal, ext, probs = project.imports(module, skip)
        external += ext
        problems += probs
        for imp in internal:
            if imp.target not in modules:
                modules[imp.target] = imp
                queue.append(imp.target)
    return Closure(modules, external, problems)


@dataclass
class Dispatch:
    modules: dict[str, set[str]]  # stage name -> the project modules the runner runs for it
    branch_imports: dict[str, set[int]]  # stage name -> ids of the import statements of its branch

    def skip(self, stage: str) -> frozenset[int]:
        """The runner's imports that running ``stage`` does not execute: other stages' branches."""
        return frozenset(i for name, ids in self.branch_imports.items() if name != stage for i in ids)


def stage_dispatch(project: Project) -> Dispatch:
    """The project modules the runner dispatches each stage name to, from its source."""
    tree = project.tree(RUNNER)
    found = Dispatch({}, {})

    def module_named(node: ast.AST) -> str | None:
        if isinstance(node, (ast.Tuple, ast.List)) and node.elts:
            node = node.elts[0]
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            name = node.value.split(":")[0]  # "tasks.ingest" or "tasks.ingest:ingest"
            if name.split(".")[0] in project.packages and project.file(name) is not None:
                return name
        return None

    for node in ast.walk(tree):
        # a mapping {"ingest": "tasks.ingest", ...} (or "tasks.ingest:ingest", or ("tasks.ingest", "ingest"))
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values):
                if isinstance(key, ast.Constant) and isinstance(key.value, str) and (mod := module_named(value)):
                    found.modules.setdefault(key.value, set()).add(mod)
        # if name == "ingest": from tasks.ingest import ingest
        elif isinstance(node, ast.If) and isinstance(node.test, ast.Compare) and len(node.test.ops) == 1 \
                and isinstance(node.test.ops[0], ast.Eq):
            sides = [node.test.left, *node.test.comparators]
            names = [s.value for s in sides if isinstance(s, ast.Constant) and isinstance(s.value, str)]
            if len(names) != 1:
                continue
            for stmt in node.body:
                for sub in ast.walk(stmt):
                    if isinstance(sub, ast.ImportFrom) and not sub.level \
                            and sub.module.split(".")[0] in project.packages:
                        mods = {sub.module}
                    elif isinstance(sub, ast.Import):
                        mods = {a.name for a in sub.names if a.name.split(".")[0] in project.packages}
                    else:
                        continue
                    if mods:
                        found.modules.setdefault(names[0], set()).update(mods)
                        found.branch_imports.setdefault(names[0], set()).add(id(sub))
    return found


def stage_modules(project: Project, dispatch: Dispatch, stage: str) -> set[str]:
    """The modules ``stage`` runs besides the runner."""
    return dispatch.modules.get(stage, set())


def stage_closure(project: Project, dispatch: Dispatch, stage: str) -> Closure:
    return closure(project, [RUNNER, *sorted(stage_modules(project, dispatch, stage))], dispatch.skip(stage))


# ---------------------------------------------------------------------------------- the paths
@dataclass(frozen=True)
class Ref:
    """A path a stage module names: ``path``, or (``dynamic``) some path under it."""

    path: PurePosixPath
    dynamic: bool
    text: str  # as written, e.g. ``paths.PLOTS / 'confusion.csv'``
    where: str  # file:line


def _eval_path(node: ast.AST, env: dict[str, tuple[PurePosixPath, bool]]) -> tuple[PurePosixPath, bool] | None:
    """A tiny evaluator of ``Path("x")``, ``A / "b"``, ``A / f"..."`` (dynamic), names in ``env``."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
            and node.func.id in ("Path", "PurePath", "PurePosixPath") and len(node.args) == 1 \
            and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
        return PurePosixPath(node.args[0].value), False
    if isinstance(node, ast.Name) and node.id in env:
        return env[node.id]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
        left = _eval_path(node.left, env)
        if left is None:
            return None
        base, dynamic = left
        if dynamic:
            return base, True
        if isinstance(node.right, ast.Constant) and isinstance(node.right.value, str):
            return base / node.right.value, False
        right = _eval_path(node.right, env)
        if right is not None and not right[1]:
            return base / right[0], False
        return base, True  # base / f"{arm}_{fraction:g}.pt": somewhere under base
    return None


def path_constants(project: Project) -> dict[str, tuple[PurePosixPath, bool]]:
    """``tasks/paths.py``'s module-level paths, and for its functions the path they return under."""
    env: dict[str, tuple[PurePosixPath, bool]] = {}
    for stmt in project.tree(PATHS).body:
        if isinstance(stmt, (ast.Assign, ast.AnnAssign)) and stmt.value is not None:
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            value = _eval_path(stmt.value, env)
            for t in targets:
                if isinstance(t, ast.Name) and value is not None:
                    env[t.id] = value
        elif isinstance(stmt, ast.FunctionDef):
            returns = [_eval_path(n.value, env) for n in ast.walk(stmt) if isinstance(n, ast.Return) and n.value]
            if returns and all(r is not None for r in returns):
                common = returns[0][0]
                for r, _ in returns[1:]:
                    while common not in (r, *r.parents):
                        common = common.parent
                env[stmt.name] = (common, True)
    return env


def imports_function(project: Project, module: str, source: str, function: str) -> bool:
    """Whether ``module`` imports ``function`` from module ``source`` (or uses ``alias.function``)."""
    package, _, leaf = source.rpartition(".")
    aliases = set()
    for node in ast.walk(project.tree(module)):
        if isinstance(node, ast.ImportFrom) and node.module == source and any(a.name == function for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and node.module == package:
            aliases.update(a.asname or a.name for a in node.names if a.name == leaf)
        elif isinstance(node, ast.Import):
            aliases.update(a.asname or a.name for a in node.names if a.name == source)
    return any(isinstance(n, ast.Attribute) and n.attr == function and ast.unparse(n.value) in aliases
               for n in ast.walk(project.tree(module)))


def path_refs(project: Project, module: str, constants: dict[str, tuple[PurePosixPath, bool]],
              function: str | None = None) -> list[Ref]:
    """The ``paths.NAME`` (and ``paths.NAME / "x"``) expressions in ``module``'s code (or only in
    its ``function``, default arguments included), outside f-strings (those name a file in a message)."""
    tree = project.tree(module)
    package, _, leaf = PATHS.rpartition(".")
    module_aliases: set[str] = set()  # local names bound to the paths module
    name_aliases: dict[str, str] = {}  # local name -> constant, for `from tasks.paths import X`
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == package:
            module_aliases.update(a.asname or a.name for a in node.names if a.name == leaf)
        elif isinstance(node, ast.ImportFrom) and node.module == PATHS:
            name_aliases.update({a.asname or a.name: a.name for a in node.names})
        elif isinstance(node, ast.Import):
            module_aliases.update(a.asname for a in node.names if a.name == PATHS and a.asname)

    def constant(node: ast.AST) -> str | None:
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in module_aliases:
            return node.attr
        if isinstance(node, ast.Name) and node.id in name_aliases:
            return name_aliases[node.id]
        return None

    refs: list[Ref] = []
    where = project.rel(module)

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.JoinedStr):
            return
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            leftmost = node
            while isinstance(leftmost, ast.BinOp) and isinstance(leftmost.op, ast.Div):
                leftmost = leftmost.left
            if (name := constant(leftmost)) is not None and name in constants:
                value = _eval_path(_replace_leftmost(node, "__ref"), {"__ref": constants[name]})
                if value is not None:
                    refs.append(Ref(value[0], value[1], ast.unparse(node), f"{where}:{node.lineno}"))
                    return
        if (name := constant(node)) is not None:
            if name not in constants:
                refs.append(Ref(PurePosixPath("?"), False, ast.unparse(node), f"{where}:{node.lineno}"))
            else:
                refs.append(Ref(*constants[name], ast.unparse(node), f"{where}:{node.lineno}"))
            return
        for child in ast.iter_child_nodes(node):
            visit(child)

    if function is None:
        visit(tree)
    else:
        defs = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == function]
        if not defs:
            return [Ref(PurePosixPath("?"), False, f"{function}()", f"{where}: no such function (LOADERS)")]
        visit(defs[0])
    return refs


def _replace_leftmost(node: ast.BinOp, name: str) -> ast.BinOp:
    node = copy.deepcopy(node)
    cursor = node
    while isinstance(cursor.left, ast.BinOp) and isinstance(cursor.left.op, ast.Div):
        cursor = cursor.left
    cursor.left = ast.Name(id=name, ctx=ast.Load())
    return node


# ----------------------------------------------------------------------------------- dvc.yaml
def _interpolate(value: str, params: dict[str, Any]) -> str:
    def lookup(match: re.Match) -> str:
        node: Any = params
        for key in match.group(1).strip().split("."):
            if not isinstance(node, dict) or key not in node:
                return match.group(0)
            node = node[key]
        return str(node)

    return re.sub(r"\$\{([^}]+)\}", lookup, value)


def _entries(items: list | None, params: dict[str, Any]) -> list[PurePosixPath]:
    """Paths of a deps/outs/metrics/plots list (strings, or one-key mappings ``path: {options}``)."""
    out = []
    for item in items or []:
        name = item if isinstance(item, str) else next(iter(item))
        out.append(PurePosixPath(_interpolate(name, params).rstrip("/")))
    return out


def _covered(path: PurePosixPath, entries: list[PurePosixPath]) -> PurePosixPath | None:
    """The entry equal to ``path`` or a directory above it, if any."""
    return next((e for e in entries if e == path or e in path.parents), None)


def check_dvc_deps(dvc: dict[str, Any], root: Path = REPO, params: dict[str, Any] | None = None,
                   loaders: dict[str, tuple[str, ...]] = LOADERS) -> list[str]:
    """What dvc.yaml's stages fail to declare (empty when it tells the truth about the code)."""
    project = Project(root)
    if params is None:
        params_file = root / "params.yaml"
        params = yaml.safe_load(params_file.read_text()) if params_file.is_file() else {}
    problems: list[str] = []
    if project.file(RUNNER) is None:
        return [f"{RUNNER}: no such module under {root}; set RUNNER in {Path(__file__).name} to the module "
                "`sslpipe stage NAME` dispatches through"]
    dispatch = stage_dispatch(project)
    constants = path_constants(project)
    if "STATE" not in constants:
        problems.append(f"{project.rel(PATHS)}: no STATE constant (the scratch directory) found")
    state = constants.get("STATE", (PurePosixPath(".sslpipe"), False))[0]

    for name, stage in (dvc.get("stages") or {}).items():
        cmd = " ".join(str(stage.get("cmd", "")).split())
        if cmd != f"sslpipe stage {name}":
            problems.append(f"stage {name}: cmd is {cmd!r}, not `sslpipe stage {name}`; its code cannot be derived")
            continue
        modules = stage_modules(project, dispatch, name)
        if not modules:
            problems.append(
                f"stage {name}: cannot find the module {project.rel(RUNNER)} runs for it (neither an "
                f"`if name == {name!r}: from tasks.X import ...` branch nor a {{{name!r}: 'tasks.X'}} mapping)")
            continue
        deps = _entries(stage.get("deps"), params)
        outs = [p for key in ("outs", "metrics", "plots") for p in _entries(stage.get(key), params)]
        found = stage_closure(project, dispatch, name)
        problems += [f"stage {name}: {p}" for p in found.problems]

        for module in found.modules:
            file = PurePosixPath(project.rel(module))
            if _covered(file, deps) is None:
                problems.append(f"stage {name}: dep missing for {file}: {found.chain(module, project)}")
        for imp in found.external:
            if imp.target in FORBIDDEN_IMPORTS:
                problems.append(f"stage {name}: imports {imp.target} at {project.rel(imp.module)}:{imp.line}: "
                                f"{found.chain(imp.module, project)}")

        readers = [(m, None) for m in sorted(modules)] + [
            (source, function) for source, functions in loaders.items() for function in functions
            if any(imports_function(project, m, source, function) for m in modules)]
        seen: set[PurePosixPath] = set()
        for module, function in readers:
            for ref in path_refs(project, module, constants, function):
                if ref.path in seen:
                    continue  # one report per path: the first place that names it
                seen.add(ref.path)
                if str(ref.path) == "?":
                    problems.append(f"stage {name}: {ref.where}: {ref.text} is not a path {project.rel(PATHS)} defines")
                elif ref.path == state or state in ref.path.parents:
                    continue  # scratch (checkpoints, Ray results, downloads): not a result
                elif _covered(ref.path, deps + outs) is None:
                    what = f"a path under {ref.path}" if ref.dynamic else str(ref.path)
                    problems.append(f"stage {name}: {ref.where} reads or writes {ref.text} = {what}, which is in "
                                    f"neither its deps nor its outs")
    for module in loaders:
        if project.file(module) is None:
            problems.append(f"LOADERS names {module}, which no longer exists; update {Path(__file__).name}")
    return problems


def load_dvc(root: Path = REPO) -> dict[str, Any]:
    return yaml.safe_load((root / "dvc.yaml").read_text())


# ------------------------------------------------------------------------------------ the tests
def test_dvc_deps_cover_every_import_and_file_each_stage_reads():
    problems = check_dvc_deps(load_dvc())
    assert not problems, "dvc.yaml does not declare what the stages use:\n  " + "\n  ".join(problems)


def test_the_checker_reports_a_removed_dep():
    dvc = load_dvc()
    project = Project(REPO)
    dispatch = stage_dispatch(project)
    constants = path_constants(project)
    removed_code = removed_data = None
    for name, stage in dvc["stages"].items():
        found = stage_closure(project, dispatch, name)
        files = {project.rel(m): m for m in found.modules}
        read = {str(ref.path) for m in stage_modules(project, dispatch, name)
                for ref in path_refs(project, m, constants)}
        for dep in stage["deps"]:
            if removed_code is None and dep in files and dep != project.rel(RUNNER):
                removed_code = (name, dep, files[dep])
            elif removed_data is None and dep in read:
                removed_data = (name, dep)
    assert removed_code and removed_data, "dvc.yaml has no single-file code dep or data dep to remove"

    name, dep, module = removed_code
    modified = copy.deepcopy(dvc)
    modified["stages"][name]["deps"].remove(dep)
    problems = check_dvc_deps(modified)
    hits = [p for p in problems if p.startswith(f"stage {name}: dep missing for {dep}:")]
    assert hits, problems
    importer = stage_closure(project, dispatch, name).modules[module]
    assert f"imported by {project.rel(importer.module)}:{importer.line}" in hits[0]

    name, dep = removed_data
    modified = copy.deepcopy(dvc)
    modified["stages"][name]["deps"].remove(dep)
    problems = check_dvc_deps(modified)
    assert any(p.startswith(f"stage {name}: ") and p.endswith(f"= {dep}, which is in neither its deps nor its outs")
               for p in problems), problems


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


@pytest.mark.parametrize("dispatch", ["branches", "mapping", "mapping_attr"])
def test_the_checker_follows_every_kind_of_import(tmp_path: Path, dispatch: str):
    """A toy project: function-level, relative and ``from pkg import submodule`` imports are
    followed, prefect is reported with its chain, an undeclared read is reported."""
    runner = {
        "branches": 'def _call(name):\n    if name == "one":\n        from tasks.one import run\n        return run()\n'
                    '    if name == "two":\n        from tasks.two import run\n        return run()\n',
        "mapping": 'import importlib\nSTAGE_MODULES = {"one": "tasks.one"}\n'
                   'def _call(name):\n    return importlib.import_module(STAGE_MODULES[name]).run()\n',
        "mapping_attr": 'STAGES = {"one": ("tasks.one:run", "a summary"), "two": ("tasks.two:run", "")}\n',
    }[dispatch]
    _write(tmp_path, {
        "tasks/__init__.py": "",
        "tasks/runner.py": runner,
        "tasks/paths.py": 'from pathlib import Path\nDATA = Path("data")\nOUT = DATA / "out.json"\n'
                          'STATE = Path(".state")\nCKPT = STATE / "c.pt"\n',
        "tasks/one.py": "from tasks import paths\n\ndef run():\n    from . import helper\n"
                        "    helper.go(paths.DATA / 'in.txt', paths.OUT, paths.CKPT)\n",
        "tasks/helper.py": "from lib import sub\n\ndef go(*a):\n    sub.work()\n",
        "tasks/two.py": "import torch\n\ndef run():\n    pass\n",  # another stage's: not one's dep
        "lib/__init__.py": "",
        "lib/sub.py": "def work():\n    import prefect\n",
    })
    dvc = {"stages": {"one": {"cmd": "sslpipe stage one", "deps": ["tasks/runner.py"], "outs": ["data/out.json"]}}}
    problems = check_dvc_deps(dvc, root=tmp_path, params={}, loaders={})
    text = "\n".join(problems)
    for file in ("tasks/__init__.py", "tasks/one.py", "tasks/paths.py", "tasks/helper.py", "lib/__init__.py",
                 "lib/sub.py"):
        assert f"dep missing for {file}:" in text, text
    assert "lib/sub.py (imported by tasks/helper.py:1) <- tasks/helper.py (imported by tasks/one.py:4)" in text
    assert "imports prefect at lib/sub.py:2" in text
    assert "paths.DATA / 'in.txt' = data/in.txt" in text
    assert "out.json" not in text and "c.pt" not in text  # an out, and scratch
    assert "tasks/two.py" not in text

    dvc["stages"]["one"]["deps"] = ["tasks", "lib", "data/in.txt"]
    assert check_dvc_deps(dvc, root=tmp_path, params={}, loaders={}) == ["stage one: imports prefect at lib/sub.py:2: "
                                                             "lib/sub.py (imported by tasks/helper.py:1) <- "
                                                             "tasks/helper.py (imported by tasks/one.py:4) <- "
                                                             "tasks/one.py (run by `sslpipe stage`)"]

    _write(tmp_path, {"tasks/runner.py": "def _call(name):\n    pass\n"})
    problems = check_dvc_deps(dvc, root=tmp_path, params={}, loaders={})
    assert problems and "stage one: cannot find the module tasks/runner.py runs for it" in problems[0]


def test_dvc_metrics_show_reads_the_headline_only_and_every_plot_has_a_png():
    """`dvc metrics show` / `diff` read one narrow file; `dvc plots show` has a PNG of every curve
    (its vega render of a CSV loads from a CDN: blank offline)."""
    stages = load_dvc()["stages"]
    metrics = [next(iter(m)) if isinstance(m, dict) else m for s in stages.values() for m in s.get("metrics", [])]
    assert metrics == ["reports/metrics.json"]
    plots = {next(iter(p)) if isinstance(p, dict) else p for s in stages.values() for p in s.get("plots", [])}
    assert {"reports/plots/pretrain_loss.png", "reports/plots/confusion_matrix.png"} <= plots
