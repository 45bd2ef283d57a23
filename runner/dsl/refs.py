"""What a template reads: `params.x`, `env.X`, `secrets.X`, `steps.s.output.y`, with lines.

Used to check, before anything runs, that a template names what the file declares
(same file, runner/dsl/loader.py) and what another file offers (a child workflow's
params and outputs, runner/dsl/crossfile.py).
"""

from __future__ import annotations

from functools import lru_cache

from jinja2 import Environment, TemplateSyntaxError, nodes

from ..templates import plain_path

ROOTS = frozenset({"params", "trigger", "env", "secrets", "steps"})
_PARSER = Environment()


@lru_cache(maxsize=8192)
def name_refs(text: str) -> tuple[tuple[str, tuple[str | int, ...], int], ...]:
    """(root, constant path after it, line) for each read of a ROOTS name, outermost only:
    `{{ steps.a.output.b[0] }}` gives ("steps", ("a", "output", "b", 0), 1). A part that
    is not a constant (`params[key]`) ends the path."""
    path = plain_path(text)
    if path is not None:
        name, segments = path
        return ((name, tuple(segments), 1),) if name in ROOTS else ()
    try:
        tree = _PARSER.parse(text)
    except TemplateSyntaxError:
        return ()
    links = list(tree.find_all((nodes.Getattr, nodes.Getitem)))
    inner = {id(n.node) for n in links}
    out = []
    for node in links:
        if id(node) in inner:
            continue  # part of a longer chain
        segments: list[str | int] = []
        current: nodes.Node = node
        while isinstance(current, nodes.Getattr | nodes.Getitem):
            if isinstance(current, nodes.Getattr):
                segments.append(current.attr)
            elif isinstance(current.arg, nodes.Const) and isinstance(current.arg.value, str | int):
                segments.append(current.arg.value)
            else:
                segments.clear()  # a computed key: only what comes before it is known
            current = current.node
        if isinstance(current, nodes.Name) and current.name in ROOTS:
            out.append((current.name, tuple(reversed(segments)), node.lineno))
    return tuple(sorted(out, key=lambda r: r[2]))
