"""Read YAML into plain data while remembering where every key and value stands.

Definition files are read with YAML 1.2 core-schema rules rather than PyYAML's
YAML 1.1 defaults, so the classic traps cannot silently change a file's meaning:
`on`/`off`/`yes`/`no` stay strings, `12:30` is not the number 750, and dates stay
strings. Mapping keys are always kept as the text written. A key written twice in
one mapping is reported instead of silently keeping the last one.

A bad file must never hang or crash the process reading it: aliases that refer to
themselves, alias "bombs" that expand to millions of values, very deep nesting and
tags that would build Python objects are all reported as YAML errors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from ..errors import YamlSyntaxError

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

MAX_VALUES = 100_000  # values one file may expand to (aliases included)
MAX_DEPTH = 200  # nesting of mappings and lists
_SCALAR_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null")}
_COLLECTION_TAGS = {"tag:yaml.org,2002:seq", "tag:yaml.org,2002:map"}


@dataclass
class Source:
    """Parsed YAML plus positions (1-based line and column) of each value and key."""

    data: Any
    values: dict[Path, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Path, tuple[int, int]] = field(default_factory=dict)
    duplicates: list[tuple[Path, int, int, int]] = field(default_factory=list)  # path, line, col, first line
    texts: dict[Path, str] = field(default_factory=dict)  # as written, for scalars that are not strings
    blocks: dict[Path, tuple[int, int]] = field(default_factory=dict)  # `|`/`>` scalars: first content line, col

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

    def where_in(self, path: Path, lineno: int) -> tuple[int, int]:
        """Position of line `lineno` (1-based) inside the text value at `path`."""
        if path in self.blocks:
            line, col = self.blocks[path]
            return (line + lineno - 1, col)
        line, col = self.where(path)
        return (line + lineno - 1, col if lineno == 1 else 1)


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
    except RecursionError:
        raise YamlSyntaxError(f"invalid YAML: nested more than {MAX_DEPTH} levels deep", 1, 1) from None
    source = Source(data=None)
    if node is not None:
        source.data = _Builder(source, text).build(node, (), 0)
    return source


def _pos(node: yaml.Node) -> tuple[int, int]:
    return (node.start_mark.line + 1, node.start_mark.column + 1)


class _Builder:
    """Turns composed nodes into plain data, recording positions on the way."""

    def __init__(self, src: Source, text: str):
        self.src = src
        self.lines = text.splitlines()
        self.count = 0
        self.active: set[int] = set()  # ids of the collections being built (alias loops)

    def fail(self, node: yaml.Node, message: str) -> YamlSyntaxError:
        return YamlSyntaxError(f"invalid YAML: {message}", *_pos(node))

    def build(self, node: yaml.Node, path: Path, depth: int) -> Any:
        self.count += 1
        if self.count > MAX_VALUES:
            raise self.fail(node, f"the file expands to more than {MAX_VALUES} values; use fewer aliases (*name)")
        if depth > MAX_DEPTH:
            raise self.fail(node, f"nested more than {MAX_DEPTH} levels deep")
        self.src.values[path] = _pos(node)
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node, path)
        if node.tag not in _COLLECTION_TAGS:
            raise self.fail(node, _tag_message(node.tag))
        if id(node) in self.active:  # the node's own position is its anchor's: show the key
            raise YamlSyntaxError("invalid YAML: an alias refers to a mapping or list that contains it",
                                  *self.src.where(path, key=True))
        self.active.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                return [self.build(item, (*path, i), depth + 1) for i, item in enumerate(node.value)]
            return self.mapping(node, path, depth)
        finally:
            self.active.discard(id(node))

    def mapping(self, node: yaml.MappingNode, path: Path, depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        merged: set[str] = set()  # keys from `<<: *alias`; an explicit key overrides them
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                for source in sources:
                    self._merge(source, path, depth, out, merged)
                continue
            key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else str(key_node)
            child = (*path, key)
            if key in merged:
                merged.discard(key)  # stale positions below it are overwritten as it is built
            elif key in out:
                first = self.src.keys.get(child, _pos(key_node))[0]
                self.src.duplicates.append((child, *_pos(key_node), first))
            self.src.keys[child] = _pos(key_node)
            out[key] = self.build(value_node, child, depth + 1)
        return out

    def _merge(self, source: yaml.Node, path: Path, depth: int, out: dict, merged: set[str]) -> None:
        """Add the keys of `<<: source` that are not set yet, with their positions."""
        own, self.src = self.src, Source(data=None)
        try:
            value = self.build(source, path, depth + 1)
            found = self.src
        finally:
            self.src = own
        if not isinstance(value, dict):
            raise self.fail(source, "'<<' merges only mappings")
        added = {key for key in value if key not in out}
        out.update((key, item) for key, item in value.items() if key in added)
        merged |= added
        level = len(path)
        for table, mine in ((found.values, own.values), (found.keys, own.keys),
                            (found.texts, own.texts), (found.blocks, own.blocks)):
            mine.update((p, v) for p, v in table.items() if len(p) > level and p[level] in added)

    def scalar(self, node: yaml.ScalarNode, path: Path) -> Any:
        if node.tag not in _SCALAR_TAGS:
            raise self.fail(node, _tag_message(node.tag))
        # a path can be built twice (a duplicate key, a merged key overridden): forget the old
        self.src.texts.pop(path, None)
        self.src.blocks.pop(path, None)
        if node.style in ("|", ">"):
            self.src.blocks[path] = self._block_start(node)
        try:
            value = _SCALARS[node.tag](node.value)
        except (ValueError, KeyError):
            raise self.fail(node, f"'{node.value}' is not a valid {node.tag.rsplit(':', 1)[-1]}") from None
        if not isinstance(value, str):
            self.src.texts[path] = node.value
        return value

    def _block_start(self, node: yaml.ScalarNode) -> tuple[int, int]:
        """First content line and column of a `|` or `>` block (the line after the indicator)."""
        first = node.start_mark.line + 1  # 0-based index of the line after the indicator
        for index in range(first, min(len(self.lines), node.end_mark.line + 1)):
            text = self.lines[index]
            if text.strip():
                return (first + 1, len(text) - len(text.lstrip(" ")) + 1)
        return (first + 1, 1)


def _tag_message(tag: str) -> str:
    shown = tag.replace("tag:yaml.org,2002:", "!!")
    return f"unsupported tag '{shown}'; Treadle reads plain YAML (text, numbers, true/false, null, lists, mappings)"


def _int(text: str) -> int:
    # YAML 1.2: 010 is ten (PyYAML's 1.1 constructor reads it as octal 8)
    sign, digits = (-1, text[1:]) if text.startswith("-") else (1, text.lstrip("+"))
    base = {"0o": 8, "0x": 16}.get(digits[:2].lower(), 10)
    return sign * int(digits[2:] if base != 10 else digits, base)


def _float(text: str) -> float:
    special = {".inf": "inf", "+.inf": "inf", "-.inf": "-inf", ".nan": "nan"}
    return float(special.get(text.lower(), text))


_SCALARS = {
    "tag:yaml.org,2002:str": str,
    "tag:yaml.org,2002:int": _int,
    "tag:yaml.org,2002:float": _float,
    "tag:yaml.org,2002:bool": lambda text: {"true": True, "false": False}[text.lower()],
    "tag:yaml.org,2002:null": lambda text: None,
}
