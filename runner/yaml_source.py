"""Read YAML into plain data while remembering where every key and value stands.

Definition files are read with YAML 1.2 core-schema rules rather than PyYAML's
YAML 1.1 defaults, so the classic traps cannot silently change a file's meaning:
`on`/`off`/`yes`/`no` stay strings, `12:30` is not the number 750, and dates stay
strings. Mapping keys are always kept as the text written. A key written twice in
one mapping is reported instead of silently keeping the last one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

try:  # the C parser is several times faster; fall back when libyaml is missing
    from yaml import CSafeLoader as _BaseLoader
except ImportError:  # pragma: no cover
    from yaml import SafeLoader as _BaseLoader  # type: ignore[assignment]

Path = tuple[str | int, ...]


class _Loader(_BaseLoader):  # type: ignore[misc, valid-type]
    """SafeLoader with YAML 1.2 core-schema scalar resolution."""

    yaml_implicit_resolvers: dict = {}


def _add(tag: str, pattern: str, first: str) -> None:
    _Loader.add_implicit_resolver(tag, re.compile(pattern, re.X), list(first))


_add("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF")
_add("tag:yaml.org,2002:int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789")
_add(
    "tag:yaml.org,2002:float",
    r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
    "-+0123456789.",
)
_add("tag:yaml.org,2002:null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""])  # type: ignore[arg-type]
_add("tag:yaml.org,2002:merge", r"^(?:<<)$", "<")

_constructor = yaml.SafeLoader("")  # used only to turn scalar nodes into values


@dataclass
class Source:
    """Parsed YAML plus positions (1-based line and column) of each value and key."""

    data: Any
    values: dict[Path, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Path, tuple[int, int]] = field(default_factory=dict)
    duplicates: list[tuple[Path, int, int]] = field(default_factory=list)

    def where(self, path: Path, *, key: bool = False) -> tuple[int, int]:
        """Position of the longest prefix of `path` that exists in the file."""
        table = self.keys if key else self.values
        for n in range(len(path), -1, -1):
            prefix = path[:n]
            if prefix in table:
                return table[prefix]
            if key and prefix in self.values:
                return self.values[prefix]
        return (1, 1)


class YamlSyntaxError(Exception):
    def __init__(self, message: str, line: int, column: int):
        super().__init__(message)
        self.line, self.column = line, column


def parse(text: str) -> Source:
    """Parse one YAML document; raise YamlSyntaxError with its position."""
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        msg = " ".join(x for x in (exc.context, exc.problem) if x)
        raise YamlSyntaxError(f"invalid YAML: {msg}", line, col) from None
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(f"invalid YAML: {exc}", 1, 1) from None
    source = Source(data=None)
    if node is not None:
        source.data = _build(node, (), source)
    return source


def _pos(node: yaml.Node) -> tuple[int, int]:
    return (node.start_mark.line + 1, node.start_mark.column + 1)


def _build(node: yaml.Node, path: Path, src: Source) -> Any:
    src.values[path] = _pos(node)
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                merged = _build(value_node, path, src)
                if isinstance(merged, dict):
                    out = {**merged, **out}
                continue
            key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else str(key_node)
            child = (*path, key)
            if key in out:
                src.duplicates.append((child, *_pos(key_node)))
            src.keys[child] = _pos(key_node)
            out[key] = _build(value_node, child, src)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, (*path, i), src) for i, item in enumerate(node.value)]
    return _constructor.construct_object(node, deep=True)
