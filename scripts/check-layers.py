#!/usr/bin/env python3
"""`make lint`: the server crate's modules depend on each other one way.

Reads every `crate::<module>` path (and `super::` inside a module's own
directory is its own business) in src/, builds the graph between top-level
modules, and fails on any cycle, printing it. With --graph it prints the
graph, lowest layer first. Checks paths in the source text, the way a
reader follows them; `mod` declarations in lib.rs are not dependencies.
"""
import pathlib
import re
import sys

SRC = pathlib.Path(__file__).resolve().parent.parent / "src"
PATH = re.compile(r"\bcrate::([a-z_][a-z0-9_]*)")
GROUP = re.compile(r"\buse crate::\{([^;]*)\}", re.S)


def module_of(path: pathlib.Path) -> str | None:
    rel = path.relative_to(SRC)
    if rel.parts[0] in ("lib.rs", "main.rs"):
        return None
    return rel.parts[0].removesuffix(".rs")


def dependencies():
    graph: dict[str, set[str]] = {}
    for path in sorted(SRC.rglob("*.rs")):
        module = module_of(path)
        if module is None:
            continue
        text = path.read_text()
        # Comments and doc links are prose, not dependencies.
        code = "\n".join(l.split("//")[0] for l in text.splitlines())
        found = set(PATH.findall(code))
        for group in GROUP.findall(code):
            found |= {g.strip().split("::")[0] for g in group.split(",") if g.strip()}
        graph.setdefault(module, set()).update(found - {module, "self"})
    return graph


def cycle(graph):
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state:
                found = visit(d)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def layers(graph):
    depth: dict[str, int] = {}

    def d(m):
        if m not in depth:
            depth[m] = 0
            depth[m] = 1 + max((d(x) for x in graph.get(m, ()) if x in graph), default=-1)
        return depth[m]

    for m in graph:
        d(m)
    return sorted(graph, key=lambda m: (depth[m], m)), depth


def main():
    graph = dependencies()
    found = cycle(graph)
    if found:
        sys.exit("check-layers.py: import circle between modules: " + " -> ".join(found))
    if "--graph" in sys.argv:
        order, depth = layers(graph)
        for m in order:
            print(f"{depth[m]}  {m:12} -> {', '.join(sorted(graph[m])) or '-'}")
    print(f"check-layers.py: {len(graph)} modules, no import circle")


if __name__ == "__main__":
    main()
