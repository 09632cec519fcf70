"""A small mutation check: does the test suite notice small, plausible bugs in the training and evaluation code?

    python benchmarks/mutation.py --workdir /tmp/mut --sample 60 --seed 0
    python benchmarks/mutation.py --list               # the mutation sites, nothing run

It copies the checkout (git's tracked and untracked, not ignored files) to --workdir, never touching the checkout
itself, and there applies one mutant at a time to a file of TARGETS: a comparison or arithmetic operator swapped,
`and`/`or` swapped, a `not` or a unary minus dropped, a number or a boolean changed, a statement replaced by
`pass`, the first two positional arguments of a call swapped. For each mutant it runs the fast tests mapped to
that file (TESTS; pytest -x, with a timeout), restores the file, and prints KILLED (a test failed), SURVIVED
(all passed: a bug the tests cannot see, or an equivalent mutant) or TIMEOUT (counted as killed), with the
mutant's location. Not part of CI: a run over 60 mutants takes about half an hour of one core.

Mutants are drawn round-robin over the files, at random within each (--seed), so every file gets its share.
Sites are only inside function bodies, docstrings excluded. MNIST comes from ADVNETS_SHARED (default: the
checkout's ../shared), as for the tests.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import random
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGETS = [
    "src/advnets/module.py",
    "src/advnets/ema.py",
    "src/advnets/stabilisers.py",
    "src/advnets/losses.py",
    "src/advnets/metrics/parzen.py",
    "src/advnets/metrics/quality.py",
    "src/advnets/guards.py",
    "src/advnets/checkpoints.py",
    "src/advnets/data/batches.py",
    "src/advnets/precision.py",
]
# The fast tests that exercise each file (pytest arguments; -k matches a file's name too: "test_data.py" keeps
# every test of that file).
TESTS = {
    "src/advnets/module.py": [
        "tests/test_wiring.py",
        "-k",
        "reaches or ema or draws_from or noise_is",
        "tests/test_updates.py",
    ],
    "src/advnets/ema.py": ["tests/test_stabilisers.py", "tests/test_wiring.py", "-k", "ema"],
    "src/advnets/stabilisers.py": [
        "tests/test_stabilisers.py",
        "tests/test_wiring.py",
        "-k",
        "r1 or instance or draws_from or baseline",
    ],
    "src/advnets/losses.py": [
        "tests/test_losses.py",
        "tests/test_stabilisers.py",
        "tests/test_wiring.py",
        "-k",
        "label or loss or baseline or d_scale or minimax or real_label",
    ],
    "src/advnets/metrics/parzen.py": [
        "tests/test_parzen.py",
        "tests/test_wiring.py",
        "-k",
        "not true_data and not benchmark and not cuda and (parzen or sigma or brute or closed or chunk or metric or grid or screen or far or input)",
    ],
    "src/advnets/metrics/quality.py": [
        "tests/test_quality.py",
        "tests/test_wiring.py",
        "-k",
        "quality or fid or kid or coverage or classifier or inception",
    ],
    "src/advnets/guards.py": ["tests/test_stabilisers.py", "tests/test_wiring.py", "-k", "collapse or max_time"],
    "src/advnets/checkpoints.py": [
        "tests/test_wiring.py",
        "tests/test_reliability.py",
        "-k",
        "resume or experiment_key or another_experiment or ckpt_last_finds or not_a_checkpoint",
    ],
    "src/advnets/data/batches.py": [
        "tests/test_data.py",
        "tests/test_tfd.py",
        "tests/test_wiring.py",
        "-k",
        "test_data.py or small_valid or draws_from or parzen_metrics or on_device or reaches",
    ],
    "src/advnets/precision.py": ["tests/test_fast_path.py"],
}

COMPARE_SWAPS = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
}
BINOP_SWAPS = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.Div,
    ast.Div: ast.Mult,
    ast.Pow: ast.Mult,
    ast.FloorDiv: ast.Div,
    ast.Mod: ast.Mult,
}


@dataclass
class Site:
    file: str
    index: int  # the site's position in the file's site list (stable for an unchanged file)
    line: int
    col: int
    kind: str
    original: str
    mutated: str


def _docstring_nodes(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module)) and node.body:
            first = node.body[0]
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                out.add(id(first))
    return out


def _in_functions(tree: ast.AST):
    """Every node inside a function body (the function's own decorators and defaults excluded)."""
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for stmt in fn.body:
                yield from ast.walk(stmt)


def _mutants(node: ast.AST, docstrings: set[int]):
    """(kind, replacement source) for each mutant of this node."""
    import copy

    if isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in COMPARE_SWAPS:
        new = copy.deepcopy(node)
        new.ops = [COMPARE_SWAPS[type(node.ops[0])]()]
        yield "compare", f"({ast.unparse(new)})"
    elif isinstance(node, ast.BinOp) and type(node.op) in BINOP_SWAPS:
        new = copy.deepcopy(node)
        new.op = BINOP_SWAPS[type(node.op)]()
        yield "arithmetic", f"({ast.unparse(new)})"
    elif isinstance(node, ast.BoolOp):
        new = copy.deepcopy(node)
        new.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        yield "boolean", f"({ast.unparse(new)})"
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.USub)):
        yield "unary", f"({ast.unparse(node.operand)})"
    elif isinstance(node, ast.Constant) and type(node.value) in (int, float, bool):
        v = node.value
        if isinstance(v, bool):
            new = not v
        elif isinstance(v, int):
            new = 1 if v == 0 else 0 if v == 1 else v + 1
        else:
            new = 1.0 if v == 0.0 else v * 2
        yield "constant", f"({new!r})"
    elif (
        isinstance(node, ast.Call)
        and len(node.args) >= 2
        and not any(isinstance(a, ast.Starred) for a in node.args[:2])
    ):
        new = copy.deepcopy(node)
        new.args[0], new.args[1] = new.args[1], new.args[0]
        yield "swap-args", f"({ast.unparse(new)})"
    if (
        isinstance(node, (ast.Expr, ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Return))
        and id(node) not in docstrings
    ):
        yield "drop-statement", "pass"


def sites(root: Path, file: str) -> list[Site]:
    source = (root / file).read_text()
    tree = ast.parse(source)
    docstrings = _docstring_nodes(tree)
    # Nodes inside f-strings: their positions are not reliable before Python 3.12.
    in_fstrings = {id(n) for f in ast.walk(tree) if isinstance(f, ast.JoinedStr) for n in ast.walk(f)}
    found, seen = [], set()
    for node in _in_functions(tree):
        if id(node) in seen or id(node) in in_fstrings or not hasattr(node, "end_col_offset"):
            continue
        seen.add(id(node))
        for kind, mutated in _mutants(node, docstrings):
            original = ast.get_source_segment(source, node) or ""
            found.append(Site(file, len(found), node.lineno, node.col_offset, kind, original, mutated))
    return found


def apply(source: str, site: Site) -> str:
    """The source with the site's node replaced by its mutant (columns are UTF-8 byte offsets)."""
    lines = source.splitlines(keepends=True)
    tree = ast.parse(source)
    for node in _in_functions(tree):
        if (getattr(node, "lineno", None), getattr(node, "col_offset", None)) == (site.line, site.col) and (
            ast.get_source_segment(source, node) or ""
        ) == site.original:
            start = sum(len(x.encode()) for x in lines[: node.lineno - 1]) + node.col_offset
            end = sum(len(x.encode()) for x in lines[: node.end_lineno - 1]) + node.end_col_offset
            data = source.encode()
            mutated = data[:start] + site.mutated.encode() + data[end:]
            return mutated.decode()
    raise RuntimeError(f"site not found: {site}")


def copy_checkout(workdir: Path) -> None:
    workdir = workdir.resolve()
    if workdir == REPO or REPO in workdir.parents:
        raise SystemExit(f"--workdir {workdir} is inside the checkout: mutants are only ever applied to a copy")
    if workdir.exists():
        shutil.rmtree(workdir)
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    for name in files:
        src = REPO / name
        if src.is_file():
            (workdir / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, workdir / name)


def run_tests(workdir: Path, file: str, timeout: float) -> tuple[str, float, str]:
    env = {
        **os.environ,
        "ADVNETS_SHARED": os.environ.get("ADVNETS_SHARED", str(REPO.parent / "shared")),
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
    }
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *TESTS[file]]
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "TIMEOUT", time.monotonic() - start, ""
    tail = [line for line in proc.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))][:1]
    status = "SURVIVED" if proc.returncode == 0 else "KILLED" if proc.returncode == 1 else f"ERROR({proc.returncode})"
    if proc.returncode not in (0, 1):
        tail = proc.stdout.splitlines()[-3:] + proc.stderr.splitlines()[-3:]
    return status, time.monotonic() - start, " | ".join(tail)[:300]


def draw(all_sites: dict[str, list[Site]], n: int, seed: int) -> list[Site]:
    rng = random.Random(seed)
    pools = {f: rng.sample(s, len(s)) for f, s in all_sites.items()}
    chosen = []
    while len(chosen) < n and any(pools.values()):
        for f in TARGETS:
            if pools.get(f) and len(chosen) < n:
                chosen.append(pools[f].pop())
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mut"))
    parser.add_argument("--sample", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--files", nargs="*", default=TARGETS)
    parser.add_argument("--only", nargs="*", default=None, help="FILE:INDEX sites to run instead of a sample")
    parser.add_argument("--list", action="store_true", help="print the mutation sites and stop")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()

    all_sites = {f: sites(REPO, f) for f in args.files}
    if args.list:
        for f, s in all_sites.items():
            print(f"{f}: {len(s)} sites")
            for site in s:
                print(
                    f"  {site.index:4d} {site.line}:{site.col} {site.kind}: {site.original[:60]!r} -> {site.mutated[:60]!r}"
                )
        return
    if args.only:
        chosen = [all_sites[f][int(i)] for f, i in (x.rsplit(":", 1) for x in args.only)]
    else:
        chosen = draw(all_sites, args.sample, args.seed)
    print(
        f"{sum(map(len, all_sites.values()))} sites in {len(all_sites)} files; running {len(chosen)} mutants "
        f"in {args.workdir}",
        flush=True,
    )
    copy_checkout(args.workdir)
    results = []
    for i, site in enumerate(chosen, 1):
        path = args.workdir / site.file
        original = path.read_text()
        try:
            path.write_text(apply(original, site))
            status, seconds, detail = run_tests(args.workdir, site.file, args.timeout)
        finally:
            path.write_text(original)
        results.append({**asdict(site), "status": status, "seconds": round(seconds, 1), "detail": detail})
        print(
            f"[{i}/{len(chosen)}] {status:8s} {site.file}:{site.line}:{site.col} #{site.index} {site.kind}: "
            f"{site.original[:70]!r} -> {site.mutated[:70]!r} ({seconds:.0f} s) {detail[:150]}",
            flush=True,
        )
        if args.out:
            args.out.write_text(json.dumps(results, indent=1))
    killed = sum(r["status"] in ("KILLED", "TIMEOUT") for r in results)
    survived = [r for r in results if r["status"] == "SURVIVED"]
    errors = [r for r in results if r["status"].startswith("ERROR")]
    print(f"\n{len(results)} mutants: {killed} killed, {len(survived)} survived, {len(errors)} errors")
    for r in survived:
        print(
            f"  SURVIVED {r['file']}:{r['line']}:{r['col']} #{r['index']} {r['kind']}: {r['original'][:80]!r} -> "
            f"{r['mutated'][:80]!r}"
        )


if __name__ == "__main__":
    main()
