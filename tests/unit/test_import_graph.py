"""No import cycle among rlad's own modules (``rlad/``, ``rollout/``, ``rewards/``), lazy imports inside
functions included: a cycle is two modules that each need the other, and the first sign of one doing the
other's job."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def import_graph() -> dict[str, set[str]]:
    files = {}
    for package in ("rlad", "rollout", "rewards"):
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            files[name] = path
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            else:
                continue
            graph[name] |= {t for t in targets if t in files and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            if component:
                found.append(sorted([v, *component]))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_rlad_rollout_and_rewards_import_without_cycles():
    graph = import_graph()
    assert "rollout.weight_sync" in graph["rlad.cluster"] and "rlad.cluster" in graph["rlad.train"]  # read for real
    assert cycles(graph) == []


def test_each_actor_takes_the_config_sections_it_uses():
    """The Ray actors' constructors name the sections they read (policy spec, their own section, sampling,
    seed), never the whole ``Config``: what an actor depends on is visible in its signature."""
    actors = {("rollout/worker.py", "RolloutWorker"): [], ("rlad/learner.py", "Learner"): []}
    for (file, cls), annotations in actors.items():
        tree = ast.parse((ROOT / file).read_text())
        init = next(
            f for c in tree.body if isinstance(c, ast.ClassDef) and c.name == cls
            for f in c.body if isinstance(f, ast.FunctionDef) and f.name == "__init__"
        )  # fmt: skip
        annotations += [ast.unparse(a.annotation) for a in init.args.args if a.annotation is not None]
    assert actors[("rollout/worker.py", "RolloutWorker")] == ["PolicySpec", "RolloutConfig", "GenerationConfig", "int"]
    assert actors[("rlad/learner.py", "Learner")] == [
        "PolicySpec", "GRPOConfig", "LearnerConfig", "GenerationConfig", "int", "int", "int"
    ]  # fmt: skip
