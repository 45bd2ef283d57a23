"""Mutation testing of Treadle's core modules: does the suite notice a small bug?

    python tools/mutate.py                       # every core module (slow: run it outside CI)
    python tools/mutate.py durations signing     # some of them
    python tools/mutate.py --list durations      # the mutants, without running anything
    python tools/mutate.py --show dag:12         # one mutant as a diff
    python tools/mutate.py --ids dag:12 dag:40   # only these mutants
    python tools/mutate.py --json /tmp/mutation.json signing   # every result as JSON

Each mutant is one small change to one module (`<` made `<=`, `and` made `or`, a
`not` dropped, a number off by one, `True` made `False`, a call or a `raise` deleted,
`+` made `-`, `break` made `continue`, ...), made on the syntax tree and written back
with `ast.unparse` into a private copy of the work tree. The module's test files then
run against that copy (`pytest -x`, SQLite cases only; PostgreSQL adds nothing to what
these modules compute); a mutant is *killed* when some test fails (or the tests time
out: 3x the unmutated run plus 30 s), and *survives* when they all pass. A survivor is
a bug the suite would let through, unless it is an *equivalent* mutant (no behaviour
changes); those are listed with the reason in tools/mutation-equivalents.txt and left
out of the score. The score is killed / (mutants - equivalent), per module; the target
is >= 90% each. docs/testing.md records the last table.

Speed: one process imports pytest and the heavy libraries once and forks a child per
mutant, which imports Treadle (the mutated copy) fresh and runs pytest in-process.
Subprocesses that the tests start (the `treadle` command, servers) import the copy
too: PYTHONPATH points at it. Log statements and asserts are not mutated, nor type
annotations and strings (messages are checked by tests, but mutating every word of
every message says little about the logic).
"""

from __future__ import annotations

import argparse
import ast
import difflib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EQUIVALENTS = ROOT / "tools" / "mutation-equivalents.txt"


@dataclass(frozen=True)
class Target:
    name: str
    path: str
    tests: tuple[str, ...]  # test files (or file::test), the quickest and most direct first (-x stops at the first failure)
    functions: tuple[str, ...] = ()  # qualified names; empty: the whole module


TARGETS = [
    Target("durations", "runner/dsl/durations.py", ("tests/test_durations.py", "tests/test_loader.py")),
    Target("dag", "runner/dsl/dag.py", ("tests/test_dag.py", "tests/test_loader.py")),
    Target("params", "runner/dsl/params.py", ("tests/test_params.py", "tests/test_loader.py")),
    Target("loader", "runner/dsl/loader.py",
           ("tests/test_loader.py", "tests/test_params.py", "tests/test_dag.py", "tests/test_durations.py",
            "tests/test_limits.py", "tests/test_cli_validate.py", "tests/test_loader_fuzz.py")),
    Target("templates", "runner/templates.py",
           ("tests/test_templates.py", "tests/test_masking.py", "tests/test_limits.py", "tests/test_loader.py")),
    Target("signing", "runner/triggers/signing.py", ("tests/test_signing.py",)),
    Target("limits", "runner/limits.py", ("tests/test_limits.py",)),
    # the engine: retries, resume and trigger rules (the rest of run.py is the scheduler's plumbing)
    Target("run", "runner/engine/run.py", ("tests/test_retries.py", "tests/test_resume.py", "tests/test_executor.py",
                                           "tests/test_circuit.py",
                                           "tests/test_limits.py::test_outputs_over_the_limit_fail_the_step_without_retries",
                                           "tests/test_limits.py::test_a_foreach_of_set_steps_is_measured_to_the_byte"),
           functions=("Resumed.attempt", "RunExecution._decide", "RunExecution._apply_resumed",
                      "RunExecution._attempts")),
    Target("recovery", "runner/engine/recovery.py",
           ("tests/test_resume.py", "tests/test_retries.py", "tests/test_executor.py")),
]
# heavy imports done once in the parent (never Treadle itself: each child imports the mutated copy)
PRELOAD = ("pytest", "pytest_asyncio", "hypothesis", "schemathesis", "sqlalchemy", "sqlalchemy.ext.asyncio",
           "sqlmodel", "pydantic", "networkx", "jinja2", "jinja2.sandbox", "httpx", "litestar", "uvicorn",
           "aiosqlite", "asyncpg", "alembic", "alembic.command", "yaml", "croniter", "watchfiles")


# -- mutants ----------------------------------------------------------------------------

_CMP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq, ast.NotEq: ast.Eq,
        ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is}
_BIN = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Div,
        ast.Pow: ast.Mult}
_SYMBOL = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!=", ast.In: "in",
           ast.NotIn: "not in", ast.Is: "is", ast.IsNot: "is not", ast.Add: "+", ast.Sub: "-", ast.Mult: "*",
           ast.Div: "/", ast.FloorDiv: "//", ast.Pow: "**", ast.And: "and", ast.Or: "or"}


@dataclass
class Mutant:
    id: str  # target:number
    target: str
    path: str
    line: int
    function: str
    source_line: str
    change: str
    node: int = field(repr=False, default=0)  # index in ast.walk order
    variant: int = field(repr=False, default=0)  # which change of the node (a comparison has one per operator)
    status: str = "pending"  # killed, timeout, survived, equivalent, invalid
    why: str = ""


def _skipped_nodes(tree: ast.AST) -> set[int]:
    """Nodes never mutated: annotations, asserts, docstrings, logging calls, TYPE_CHECKING blocks."""
    skip: set[int] = set()

    def all_of(node: ast.AST | None) -> None:
        if node is not None:
            skip.update(id(n) for n in ast.walk(node))

    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            all_of(node.returns)
            for arg in (*node.args.args, *node.args.kwonlyargs, *node.args.posonlyargs, node.args.vararg,
                        node.args.kwarg):
                if arg is not None:
                    all_of(arg.annotation)
        elif isinstance(node, ast.AnnAssign):
            all_of(node.annotation)
        elif isinstance(node, ast.Assert):
            all_of(node)
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
            func = node.value.func
            if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id in ("log", "logging"):
                all_of(node)
        elif (isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
              or isinstance(node, ast.ImportFrom | ast.Import)):
            all_of(node)
    return skip


def _functions(tree: ast.AST) -> list[tuple[int, int, str]]:
    """(first line, last line, qualified name) of every function, innermost last."""
    out: list[tuple[int, int, str]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    out.append((child.lineno, child.end_lineno or child.lineno, name))
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(tree, "")
    return out


def _function_at(functions: list[tuple[int, int, str]], line: int) -> str:
    best = "<module>"
    width = None
    for first, last, name in functions:
        if first <= line <= last and (width is None or last - first <= width):
            best, width = name, last - first
    return best


def _changes(node: ast.AST) -> list[str]:
    """What can be changed in this node, as text (one entry per mutant)."""
    if isinstance(node, ast.Compare):
        return [f"{_SYMBOL[type(op)]} -> {_SYMBOL[_CMP[type(op)]]}" for op in node.ops if type(op) in _CMP]
    if isinstance(node, ast.BoolOp):
        other = ast.Or if isinstance(node.op, ast.And) else ast.And
        return [f"{_SYMBOL[type(node.op)]} -> {_SYMBOL[other]}"]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return ["not x -> x"]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant):
        return ["-n -> n"]
    if isinstance(node, ast.BinOp) and type(node.op) in _BIN:
        return [f"{_SYMBOL[type(node.op)]} -> {_SYMBOL[_BIN[type(node.op)]]}"]
    if isinstance(node, ast.AugAssign) and type(node.op) in (ast.Add, ast.Sub):
        return [f"{_SYMBOL[type(node.op)]}= -> {_SYMBOL[_BIN[type(node.op)]]}="]
    if isinstance(node, ast.Constant):
        if node.value is True or node.value is False:
            return [f"{node.value} -> {not node.value}"]
        if type(node.value) in (int, float):
            return [f"{node.value!r} -> {node.value + 1!r}"]
        return []
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call | ast.Await):
        return ["call deleted"]
    if isinstance(node, ast.Raise):
        return ["raise deleted"]
    if isinstance(node, ast.Break):
        return ["break -> continue"]
    if isinstance(node, ast.Continue):
        return ["continue -> break"]
    if isinstance(node, ast.Return) and node.value is not None and not (
            isinstance(node.value, ast.Constant) and node.value.value is None):
        return ["return x -> return None"]
    return []


def _apply(node: ast.AST, variant: int) -> ast.AST:
    """Change `node` in place (or return its replacement)."""
    if isinstance(node, ast.Compare):
        positions = [i for i, op in enumerate(node.ops) if type(op) in _CMP]
        i = positions[variant]
        node.ops[i] = _CMP[type(node.ops[i])]()
    elif isinstance(node, ast.BoolOp):
        node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
    elif isinstance(node, ast.UnaryOp):
        return node.operand
    elif isinstance(node, ast.BinOp | ast.AugAssign):
        node.op = _BIN[type(node.op)]()
    elif isinstance(node, ast.Constant):
        node.value = (not node.value) if isinstance(node.value, bool) else node.value + 1
    elif isinstance(node, ast.Expr | ast.Raise):
        return ast.Pass()
    elif isinstance(node, ast.Break):
        return ast.Continue()
    elif isinstance(node, ast.Continue):
        return ast.Break()
    elif isinstance(node, ast.Return):
        node.value = ast.Constant(None)
    return node


class _Replace(ast.NodeTransformer):
    def __init__(self, target: ast.AST, variant: int):
        self.target, self.variant = target, variant

    def visit(self, node: ast.AST) -> ast.AST:
        if node is self.target:
            return _apply(node, self.variant)
        return self.generic_visit(node)


def mutants_of(target: Target) -> tuple[str, list[Mutant]]:
    source = (ROOT / target.path).read_text()
    tree = ast.parse(source)
    lines = source.splitlines()
    skip = _skipped_nodes(tree)
    functions = _functions(tree)
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
                  and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    found: list[tuple[int, int, int, int, str, str]] = []
    for index, node in enumerate(ast.walk(tree)):
        if id(node) in skip or id(node) in docstrings or not hasattr(node, "lineno"):
            continue
        function = _function_at(functions, node.lineno)
        if target.functions and function not in target.functions:
            continue
        for variant, change in enumerate(_changes(node)):
            found.append((node.lineno, node.col_offset, variant, index, function, change))
    out = []  # numbered in the order of the file, so that ids stay put while the module does
    for number, (line, _, variant, index, function, change) in enumerate(sorted(found), 1):
        out.append(Mutant(id=f"{target.name}:{number}", target=target.name, path=target.path, line=line,
                          function=function, source_line=lines[line - 1].strip(), change=change, node=index,
                          variant=variant))
    return source, out


def mutated_source(source: str, mutant: Mutant) -> str:
    tree = ast.parse(source)
    node = list(ast.walk(tree))[mutant.node]
    tree = _Replace(node, mutant.variant).visit(tree)
    ast.fix_missing_locations(tree)
    return ast.unparse(tree) + "\n"


def load_equivalents() -> list[tuple[str, str, str, str, str]]:
    """(path, function, source line, change, why) per line of tools/mutation-equivalents.txt."""
    out = []
    if EQUIVALENTS.exists():
        for raw in EQUIVALENTS.read_text().splitlines():
            if not raw.strip() or raw.lstrip().startswith("#"):
                continue
            parts = [p.strip() for p in raw.split(" | ")]
            if len(parts) != 5:
                raise SystemExit(f"{EQUIVALENTS.name}: expected 'path | function | line | change | why': {raw}")
            out.append(tuple(parts))  # type: ignore[arg-type]
    return out


def equivalent_reason(mutant: Mutant, equivalents: list[tuple[str, str, str, str, str]]) -> str | None:
    for path, function, line, change, why in equivalents:
        if (path, function, line, change) == (mutant.path, mutant.function, mutant.source_line, mutant.change):
            return why
    return None


# -- running ------------------------------------------------------------------------------

def make_copy() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="treadle-mutate-"))
    tree = folder / "tree"
    shutil.copytree(ROOT, tree, ignore=shutil.ignore_patterns(".git", "__pycache__", "*.egg-info", ".hypothesis",
                                                             ".pytest_cache", ".ruff_cache", ".treadle"))
    return tree


def _child(tree: Path, tests: tuple[str, ...], log_path: Path) -> None:
    """In the forked child: run pytest on `tree` and exit with its code."""
    os.setpgid(0, 0)  # its own process group: a timeout kills what the tests started too
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.chdir(tree)
    sys.path.insert(0, str(tree))
    os.environ["PYTHONPATH"] = str(tree) + os.pathsep + os.environ.get("PYTHONPATH", "")
    # no bytecode caches: two mutants of the same size written in the same second would
    # otherwise share a stale .pyc (its check is size + whole-second mtime)
    sys.dont_write_bytecode = True
    os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
    import pytest

    code = pytest.main(["-x", "-q", "-p", "no:cacheprovider", "-k", "not postgresql", "--no-header",
                        "-o", "addopts=", *tests])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(code))


def _stop_group(pid: int) -> None:
    """Stop a mutant's pytest and everything it started (its own process group)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            pass
        time.sleep(1)
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def run_tests(tree: Path, tests: tuple[str, ...], timeout: float, log_path: Path) -> tuple[str, float]:
    """('passed' | 'failed' | 'timeout', seconds)."""
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            _child(tree, tests, log_path)
        finally:
            os._exit(99)
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                code = os.waitstatus_to_exitcode(status)
                return ("passed" if code == 0 else "failed"), time.monotonic() - started
            if time.monotonic() - started > timeout:
                _stop_group(pid)
                return "timeout", time.monotonic() - started
            time.sleep(0.05)
    except BaseException:  # interrupted (Ctrl-C, SIGTERM): leave no mutant running
        _stop_group(pid)
        raise


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", help=f"modules: {', '.join(t.name for t in TARGETS)} (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutants and stop")
    parser.add_argument("--show", metavar="ID", help="print one mutant as a diff and stop")
    parser.add_argument("--ids", nargs="+", metavar="ID", help="run only these mutants")
    parser.add_argument("--json", type=Path, help="write every mutant's result here")
    parser.add_argument("--log-dir", type=Path, help="keep each mutant's pytest output here")
    args = parser.parse_args()

    names = {t.name: t for t in TARGETS}
    wanted = set(args.targets) or ({i.split(":")[0] for i in args.ids} if args.ids else set(names))
    unknown = wanted - set(names)
    if unknown:
        parser.error(f"unknown module {', '.join(sorted(unknown))}; known: {', '.join(names)}")
    targets = [t for t in TARGETS if t.name in wanted]
    equivalents = load_equivalents()

    plans: list[tuple[Target, str, list[Mutant]]] = []
    for target in targets:
        source, mutants = mutants_of(target)
        if args.ids:
            mutants = [m for m in mutants if m.id in args.ids]
        for m in mutants:
            why = equivalent_reason(m, equivalents)
            if why is not None:
                m.status, m.why = "equivalent", why
        plans.append((target, source, mutants))

    if args.show:
        for _, source, mutants in plans:
            for m in mutants:
                if m.id == args.show:
                    new = mutated_source(source, m)
                    old = ast.unparse(ast.parse(source)) + "\n"
                    sys.stdout.writelines(difflib.unified_diff(old.splitlines(True), new.splitlines(True),
                                                               m.path, f"{m.path} ({m.id})", n=2))
                    return 0
        parser.error(f"no mutant {args.show}")
    if args.list:
        for _, _, mutants in plans:
            for m in mutants:
                note = f"  [equivalent: {m.why}]" if m.status == "equivalent" else ""
                print(f"{m.id:14} {m.path}:{m.line} {m.function}: {m.change}    {m.source_line}{note}")
        return 0

    # SIGTERM (and SIGINT, which a shell's background job ignores) end the run cleanly:
    # the running mutant's processes are stopped and the copy of the tree removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))
    for module in PRELOAD:
        try:
            __import__(module)
        except ImportError:
            pass
    tree = make_copy()
    log_dir = args.log_dir or tree.parent / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    print(f"work tree copy: {tree}; pytest output of each mutant: {log_dir}", flush=True)
    started = time.monotonic()
    try:
        for target, source, mutants in plans:
            tests = tuple(t for t in target.tests if (tree / t.split("::")[0]).exists())  # an older tree may lack some
            module_file = tree / target.path
            identity = ast.unparse(ast.parse(source)) + "\n"
            module_file.write_text(identity)
            outcome, seconds = run_tests(tree, tests, 1800, log_dir / f"{target.name}-baseline.log")
            if outcome != "passed":
                print(f"{target.name}: the tests fail without any mutant (see {log_dir}/{target.name}-baseline.log)")
                return 2
            timeout = 3 * seconds + 30
            todo = [m for m in mutants if m.status == "pending"]
            print(f"{target.name}: {len(mutants)} mutants ({len(mutants) - len(todo)} equivalent); the tests take "
                  f"{seconds:.0f} s unmutated", flush=True)
            for m in todo:
                try:
                    text = mutated_source(source, m)
                    compile(text, m.path, "exec")
                except (SyntaxError, ValueError) as exc:
                    m.status, m.why = "invalid", str(exc)
                    continue
                module_file.write_text(text)
                outcome, seconds = run_tests(tree, tests, timeout, log_dir / f"{m.id.replace(':', '-')}.log")
                m.status = {"passed": "survived", "failed": "killed", "timeout": "timeout"}[outcome]
                mark = "SURVIVED" if m.status == "survived" else m.status
                print(f"  {m.id:14} {mark:8} {seconds:5.1f}s  {m.path}:{m.line} {m.function}: {m.change}"
                      f"    {m.source_line}", flush=True)
            module_file.write_text(source)
    finally:
        shutil.rmtree(tree, ignore_errors=True)

    print(f"\nmutation results ({time.monotonic() - started:.0f} s)\n")
    print("| module | mutants | killed | equivalent | survived | score |")
    print("|---|---|---|---|---|---|")
    worst = 100.0
    for target, _, mutants in plans:
        counted = [m for m in mutants if m.status in ("killed", "timeout", "survived")]
        killed = sum(m.status in ("killed", "timeout") for m in counted)
        equivalent = sum(m.status == "equivalent" for m in mutants)
        score = 100.0 * killed / len(counted) if counted else 100.0
        worst = min(worst, score)
        print(f"| {target.name} (`{target.path}`) | {len(counted) + equivalent} | {killed} | {equivalent} | "
              f"{len(counted) - killed} | {score:.0f}% |")
    survivors = [m for _, _, ms in plans for m in ms if m.status == "survived"]
    if survivors:
        print("\nsurvivors (a bug no test notices, or an equivalent mutant to list in "
              f"{EQUIVALENTS.relative_to(ROOT)} with why):")
        for m in survivors:
            print(f"  {m.id:14} {m.path}:{m.line} {m.function}: {m.change}    {m.source_line}")
    if args.json:
        args.json.write_text(json.dumps([asdict(m) for _, _, ms in plans for m in ms], indent=1))
    return 0 if worst >= 90 else 1


if __name__ == "__main__":
    sys.exit(main())
