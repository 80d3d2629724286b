"""The import structure of the code (issue 13), read from the source with ``ast``.

- no import circle among the modules of sweep/, models/, optim/, metrics/ (the optimizer
  registry's is deliberate and allowed by name);
- models/, optim/ and metrics/ are plain libraries: nothing from sweep/, Hydra, OmegaConf, W&B or
  submitit;
- every module says what it owns: its docstring opens with one sentence naming it (cohesion, not
  a line count, sets module borders), and no module anywhere grows past what one reader holds at
  once (MAX_LINES);
- sweep/analysis/ imports only the floor-0 modules of sweep/ and is imported only by the command
  ``specsweep-fit``; it imports no project module inside a function;
- outside sweep/data/, sweep/ imports a project module inside a function only to keep torch out
  of a command that does not need it (listed below with the reason), never to hide a circle;
- only sweep/rundir/ spells the run directory's file names and the run statuses;
- sweep/run/ takes a RunSpec: it imports neither Hydra nor OmegaConf (sweep/train.py reads them);
- the code is imported under the project namespace only (``specsweep.sweep``, never a top-level
  ``sweep``), everywhere: packages, tests, benchmarks, plugins (issue 23 item 4).

Module names below are the repository's (``sweep.fit`` is the module ``specsweep.sweep.fit``).

Function-local imports count like module-level ones: a circle hidden inside a function is still
a circle. The allow-lists below name what is known to break a rule today; each entry must still
be needed (a stale entry fails the last test), so the lists only shrink.
"""

from __future__ import annotations

import ast
import re
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("sweep", "models", "optim", "metrics")
NAMESPACE = "specsweep."
LIBRARIES = ("models", "optim", "metrics")
NOT_IN_LIBRARIES = ("sweep", "hydra", "omegaconf", "wandb", "submitit")
# What one reader holds at once; a bound on a module's size, not a target that draws its borders.
MAX_LINES = 600

# The optimizer registry's circle is deliberate: optim.registry imports every built-in optimizer
# module so that each registers its builder, and each of them imports optim.registry.register.
# Allowed: the one circle through it, as long as it stays inside optim/ (today adamw, dion, lion,
# matrix_bundle, muon, normuon and registry).
OPTIMIZER_REGISTRY = "optim.registry"

# What sweep/analysis/ may import from sweep/: itself and floor 0 (a package with its submodules).
ANALYSIS = "sweep.analysis"
ANALYSIS_MAY_IMPORT = ("sweep.rundir", "sweep.credentials", "sweep.errors", "sweep.wandb_keys",
                      "sweep.liveness")  # stdlib only: is a process alive (stale staging folders)

# Function-local imports of project modules in sweep/ (module, imported module): each keeps torch
# out of a process that does not need it. sweep/data/ and sweep/prepare.py are reorganised by other
# work (issue 13, data side) and not checked here yet.
LOCAL_IMPORTS = {
    ("sweep.grid.run_id", "optim"): "the ${run_id:} resolver runs in sweep.prepare and sweep.train --help",
    ("sweep.train", "sweep.grid.spec"): "only the job builds models; not --help, --cfg",
    ("sweep.train", "sweep.run.trainer"): "only the job trains; not --help, --cfg",
    ("sweep.plan", "sweep.grid.planning"): "the planner builds models on the meta device (torch); not --help",
    ("sweep.fit", "sweep.analysis.command"): "pandas, SciPy and matplotlib load slowly; not --help or a usage error",
    ("sweep.fit", "sweep.analysis.pipeline"): "sweep.fit.run_fit on first use; not --help",
    ("sweep.plan", "sweep.analysis.power_plan"): "the resolution block needs scipy and pandas, slow to import; not --help",
}

# The run directory's owner, and what only it may spell (docs/contracts.md).
RUNDIR = "sweep/rundir/"
RUN_FILE_NAMES = re.compile(
    r"(?<![\w.])(run\.json|metrics\.jsonl|spectra\.jsonl|identity\.json|heartbeat\.json|DONE)(?![\w.])"
    r"|^checkpoints$|(?<![\w.])checkpoints/")
RUN_STATUSES = {"running", "done", "diverged", "failed", "interrupted", "requeued"}
# Literals equal to a status word that are another vocabulary (path, literal): why.
OTHER_VOCABULARIES = {
    ("sweep/analysis/wandb_io.py", "failed"): "a W&B run state (W&B's vocabulary), mapped to a run status there",
    ("sweep/run/distributed.py", "failed"): "the watchdog's value in the process group's store",
    ("sweep/run/loop.py", "diverged"): "a field of the divergence row in metrics.jsonl and a W&B key",
}
ANALYSIS_IMPORTED_BY = ("sweep.fit", "sweep.plan")  # the commands users type (plan: resolution from a pilot)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@lru_cache(maxsize=None)
def _sources() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _imports(name: str) -> list[tuple[str, bool]]:
    """(imported name, inside a function?) for every import statement of module ``name``; relative
    imports made absolute, ``from X import Y`` given as ``X.Y`` (Y may be a submodule)."""
    path = _sources()[name]
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, local: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((alias.name, local) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package[:len(package) - (child.level - 1)]
                    base = ".".join([*anchor, *([child.module] if child.module else [])])
                found.extend((f"{base}.{alias.name}" if base else alias.name, local) for alias in child.names)
            visit(child, inner)

    visit(tree, False)
    return [(imported.removeprefix(NAMESPACE), local) for imported, local in found]


def _resolve(imported: str) -> str | None:
    """The project module an import loads (longest known prefix), or None for other packages."""
    name = imported
    while name:
        if name in _sources():
            return name
        name = name.rpartition(".")[0]
    return None


@lru_cache(maxsize=None)
def _graph() -> dict[str, frozenset[str]]:
    graph = {}
    for name in _sources():
        targets = {_resolve(imported) for imported, _ in _imports(name)}
        graph[name] = frozenset(t for t in targets if t is not None and t != name)
    return graph


def _circles() -> list[frozenset[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[frozenset[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                members = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    members.add(member)
                    if member == node:
                        break
                if len(members) > 1:
                    circles.append(frozenset(members))
    return circles


def _is_optimizer_registry(circle: frozenset[str]) -> bool:
    return OPTIMIZER_REGISTRY in circle and all(m.startswith("optim.") for m in circle)


def test_the_import_walk_sees_the_known_edges():
    # Guards the checks below against a walker that silently finds nothing.
    graph = _graph()
    assert "sweep.rundir" in graph["sweep.analysis.read"]  # from sweep import rundir
    assert "sweep.analysis.pipeline" in graph["sweep.fit"]
    assert "optim.adamw" in graph["optim.registry"]  # function-local import
    assert "metrics.fit" in graph["sweep.analysis.points"]  # from metrics import fit as mfit
    assert any(_is_optimizer_registry(c) for c in _circles())


def test_the_project_is_imported_under_its_namespace_only():
    """``import sweep`` or ``from models import ...`` would load a user's own package of that name
    (or ours twice, under two names): every tracked Python file spells ``specsweep.``."""
    bare = []
    folders = (*PACKAGES, "specsweep", "hydra_plugins", "tests", "benchmarks")  # where our code lives
    for path in sorted([*ROOT.glob("*.py"), *(p for f in folders for p in (ROOT / f).rglob("*.py"))]):
        rel = path.relative_to(ROOT)
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            bare += [f"{rel}:{node.lineno} {n}" for n in names if n.split(".")[0] in (*PACKAGES, "conf")]
    assert bare == [], bare


def test_no_import_circles_but_the_optimizer_registry():
    unexpected = [sorted(c) for c in _circles() if not _is_optimizer_registry(c)]
    assert unexpected == [], f"import circles: {unexpected}"


def test_libraries_import_nothing_from_the_app_layer():
    bad = []
    for name in _sources():
        if name.split(".")[0] in LIBRARIES:
            bad += [f"{name} imports {imported}" for imported, _ in _imports(name)
                    if imported.split(".")[0] in NOT_IN_LIBRARIES]
    assert bad == []


def test_no_module_anywhere_grows_past_what_one_reader_holds():
    lengths = {p.relative_to(ROOT).as_posix(): len(p.read_text().splitlines()) for p in _sources().values()}
    too_long = {path: n for path, n in lengths.items() if n > MAX_LINES}
    assert too_long == {}, f"modules over {MAX_LINES} lines: {too_long}"


def test_every_module_opens_by_saying_what_it_owns():
    silent = []
    for path in _sources().values():
        doc = ast.get_docstring(ast.parse(path.read_text()))
        first = (doc or "").strip().split("\n\n")[0]
        if len(first.split()) < 4:  # a sentence, not a bare name
            silent.append(path.relative_to(ROOT).as_posix())
    assert silent == [], f"modules without a docstring naming what they own: {silent}"


def test_analysis_imports_only_floor_0_and_only_the_fit_command_imports_it():
    graph = _graph()
    for name, targets in graph.items():
        if name == ANALYSIS or name.startswith(ANALYSIS + "."):
            outside = sorted(t for t in targets if t.startswith("sweep") and not t.startswith(ANALYSIS)
                             and not any(t == m or t.startswith(m + ".") for m in ANALYSIS_MAY_IMPORT))
            assert outside == [], f"{name} imports {outside}"
            local = [imported for imported, in_function in _imports(name)
                     if in_function and _resolve(imported) is not None]
            assert local == [], f"{name} imports project modules inside functions: {local}"
        elif name.startswith("sweep"):
            users = sorted(t for t in targets if t == ANALYSIS or t.startswith(ANALYSIS + "."))
            assert name in ANALYSIS_IMPORTED_BY or users == [], f"{name} imports {users}"


def _local_project_imports() -> set[tuple[str, str]]:
    found = set()
    for name in _sources():
        if name.startswith("sweep"):
            found |= {(name, _resolve(imported)) for imported, local in _imports(name)
                      if local and _resolve(imported) is not None}
    return found


def test_no_function_local_import_of_a_project_module_but_to_keep_torch_out():
    unexplained = sorted(_local_project_imports() - set(LOCAL_IMPORTS))
    assert unexplained == [], f"function-local imports of project modules: {unexplained}"


def _string_literals(path: Path) -> list[tuple[int, str]]:
    """(line, value) of every string constant of a module but its docstrings (f-string parts included)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    docstrings = {id(node.value) for node in ast.walk(tree)
                  if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def _run_dir_literals() -> list[tuple[str, int, str]]:
    found = []
    for path in sorted((ROOT / "sweep").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith(RUNDIR):
            continue
        found += [(rel, line, value) for line, value in _string_literals(path)
                  if RUN_FILE_NAMES.search(value) or value in RUN_STATUSES]
    return found


def test_the_literal_scan_sees_the_run_directory_owner():
    # Guards the check below against a scan that silently finds nothing.
    owner = {value for line, value in _string_literals(ROOT / RUNDIR / "layout.py")}
    assert {"run.json", "DONE", "checkpoints", "done", "failed"} <= owner
    assert RUN_FILE_NAMES.search("no run.json in {path}") and RUN_FILE_NAMES.search("checkpoints/ckpt")
    assert not RUN_FILE_NAMES.search("the last 5 logged checkpoints") and not RUN_FILE_NAMES.search("my_run.json")


def test_only_the_run_directory_owner_spells_its_file_names_and_statuses():
    found = [(rel, line, value) for rel, line, value in _run_dir_literals()
             if (rel, value) not in OTHER_VOCABULARIES]
    assert found == [], "use sweep.rundir's names (RunDir paths, STATUS_*, ...) instead of: " + repr(found)


def test_the_run_takes_a_run_spec_not_the_hydra_config():
    bad = [f"{name} imports {imported}" for name in _sources() if name.startswith("sweep.run.")
           for imported, _ in _imports(name) if imported.split(".")[0] in ("hydra", "omegaconf")]
    assert bad == []


def test_allow_lists_hold_only_live_exceptions():
    # When other work fixes a known exception, its entry must go (the lists only shrink).
    assert sorted(set(LOCAL_IMPORTS) - _local_project_imports()) == []
    literals = {(rel, value) for rel, _, value in _run_dir_literals()}
    assert sorted(set(OTHER_VOCABULARIES) - literals) == []


def test_data_imports_nothing_above_it():
    # sweep/data/ is floor 1, below the grid: grid/ builds its DataSpec, run/ loads its batches.
    graph = _graph()
    above = [f"{name} imports {t}" for name, targets in graph.items() if name.startswith("sweep.data")
             for t in targets if t.startswith("sweep.") and not t.startswith("sweep.data")
             and t not in ("sweep.errors", "sweep.credentials")]
    assert above == []
