"""Reading YAML from users safely: the safe loader plus the limits it lacks.

PyYAML's safe loader runs no code, but it happily reads a duplicate key (the last one silently wins),
composes aliases that expand to billions of values (a 700-byte "billion laughs" file), recurses until
Python's stack runs out on deeply nested input, and decodes whatever bytes it is given. Here every
such input is refused with a short reason. No torch: options are read before torch is imported.
"""
from __future__ import annotations

import codecs
import os
import reprlib
import stat
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

MAX_BYTES = 1 << 16  # an options file is a few kilobytes, comments included
MAX_DEPTH = 20  # options nest 3 levels (file, section, list); aliases count as expanded
MAX_NODES = 10_000  # values after expanding aliases; a full options file has about 100
_MERGE_TAG = "tag:yaml.org,2002:merge"


class YamlRefused(Exception):
    """Why some YAML is refused, phrased to follow its source: "options file X <reason>"."""


class YamlSyntax(YamlRefused):
    """Not YAML at all (as opposed to YAML refused by a limit); `--set` then takes the text as a string."""


class _Repr(reprlib.Repr):
    def __init__(self) -> None:
        super().__init__()
        self.maxlevel, self.maxlist, self.maxtuple, self.maxdict, self.maxset = 3, 6, 6, 4, 6
        self.maxstring = self.maxother = self.maxlong = 60

    def repr_int(self, x: int, level: int) -> str:
        # repr() of an int over 4300 digits raises (CVE-2020-10735 limit), and YAML's 0b... form can make one
        if x.bit_length() > 200:
            return f"<an integer of {x.bit_length()} bits>"
        return super().repr_int(x, level)


_REPR = _Repr()


def show_value(value: Any, limit: int = 80) -> str:
    """A user's value for a message: its repr, cut to about `limit` characters, never more than one line."""
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def show_name(name: str, limit: int = 60) -> str:
    """A key as written by the user (dotted), cut and escaped so that a message stays one short line."""
    if name.isprintable() and len(name) <= limit:
        return name
    return repr(name[:limit])[1:-1] + ("..." if len(name) > limit else "")


class _Loader(yaml.SafeLoader):
    """The safe loader, with a nesting limit while composing and value errors tied to their line."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = self._nodes = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        # Composing recurses per level: refuse deep nesting here, long before Python's stack runs out;
        # and stop a huge document early (parsing is lazy, so this also bounds the time spent).
        self._depth += 1
        self._nodes += 1
        try:
            line = self.peek_event().start_mark.line + 1
            if self._depth > MAX_DEPTH:
                raise YamlRefused(f"nests deeper than {MAX_DEPTH} levels (line {line}); options nest at most 3")
            if self._nodes > MAX_NODES:
                raise YamlRefused(f"holds more than {MAX_NODES} values (line {line}); "
                                  "all the options together are about 100")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        # A date like 2024-13-45, or an integer over 4300 digits, raises a bare ValueError in PyYAML.
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as err:
            reason = " ".join(str(err).split())
            reason = reason if len(reason) <= 60 else reason[:57] + "..."
            raise ConstructorError(None, None, f"cannot read this value ({reason})", node.start_mark) from None

    def construct_yaml_int(self, node: ScalarNode) -> int:
        """An integer, unless YAML 1.1 reads it otherwise than it reads: octal `010` (8), base 60 `1:30` (90)."""
        value = super().construct_yaml_int(node)
        digits = node.value.replace("_", "").lstrip("+-")
        if ":" in digits or (digits[:1] == "0" and digits.isdigit() and int(digits) != abs(value)):
            raise _misread(node, value, "octal" if ":" not in digits else "base 60")
        return value

    def construct_yaml_float(self, node: ScalarNode) -> float:
        value = super().construct_yaml_float(node)
        if ":" in node.value:  # 1:30.5 is 90.5
            raise _misread(node, value, "base 60")
        return value

    def check(self, node: Node) -> None:
        """Refuse a composed document that expands too far, refers to itself, or repeats a key."""
        self._size(node, 1, "", {}, set())

    def _size(self, node: Node, depth: int, where: str, memo: dict[int, tuple[int, int]], active: set[int]) -> int:
        """Values under `node` with aliases expanded, memoised per node so a bomb costs its unique nodes."""
        line = node.start_mark.line + 1
        if id(node) in active:
            raise YamlRefused(f"holds a value that contains itself (an alias inside its own anchor, line {line})")
        if id(node) in memo:
            size, height = memo[id(node)]
            if depth + height - 1 > MAX_DEPTH:
                raise YamlRefused(f"nests deeper than {MAX_DEPTH} levels once its aliases are expanded (line {line})")
            return size
        if depth > MAX_DEPTH:
            raise YamlRefused(f"nests deeper than {MAX_DEPTH} levels once its aliases are expanded (line {line})")
        active.add(id(node))
        size, height = 1, 1
        children: list[tuple[Node, str]] = []
        if isinstance(node, SequenceNode):
            children = [(child, where) for child in node.value]
        elif isinstance(node, MappingNode):
            seen: dict[Any, Node] = {}
            for key_node, value_node in node.value:
                name = where
                if isinstance(key_node, ScalarNode) and key_node.tag != _MERGE_TAG:
                    key = self.construct_object(key_node)
                    text = key if isinstance(key, str) else show_value(key)
                    name = f"{where}.{text}" if where else text
                    if key in seen:
                        raise YamlRefused(f"has the key '{show_name(name)}' twice ({_where(seen[key], key_node)}); "
                                          "keep one")
                    seen[key] = key_node
                children += [(key_node, where), (value_node, name)]
        for child, name in children:
            size += self._size(child, depth + 1, name, memo, active)
            height = max(height, 1 + memo[id(child)][1])
            if size > MAX_NODES:
                raise YamlRefused(f"expands to more than {MAX_NODES} values (YAML aliases, line {line}); "
                                  "all the options together are about 100")
        active.discard(id(node))
        memo[id(node)] = (size, height)
        return size


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)
_Loader.add_constructor("tag:yaml.org,2002:float", _Loader.construct_yaml_float)


def _misread(node: Node, value: Any, kind: str) -> YamlRefused:
    return YamlRefused(f"holds {show_value(node.value, 30)} (line {node.start_mark.line + 1}), which YAML 1.1 reads "
                       f"as the {kind} number {show_value(value, 30)}: write the number meant in plain digits "
                       "(quote it if it is text)")


def _where(first: Node, second: Node) -> str:
    a, b = first.start_mark, second.start_mark
    if a.line != b.line:
        return f"lines {a.line + 1} and {b.line + 1}"
    return f"line {a.line + 1}, columns {a.column + 1} and {b.column + 1}"


def _syntax(err: yaml.YAMLError, text: str) -> YamlSyntax:
    """One line from PyYAML's multi-line error: where, and the problem."""
    if isinstance(err, yaml.reader.ReaderError):
        line = text.count("\n", 0, err.position) + 1
        return YamlSyntax(f"is not valid YAML at line {line}: it holds the control character #x{err.character:02x}")
    mark = getattr(err, "problem_mark", None)
    at = f" at line {mark.line + 1}" if mark else ""
    problem = str(getattr(err, "problem", None) or err)
    context = getattr(err, "context", None)
    if context and problem.startswith("but "):  # "expected a single document ..., but found another"
        problem = f"{context}, {problem}"
    problem = " ".join(problem.split())
    return YamlSyntax(f"is not valid YAML{at}: {problem[:120]}")


def load_yaml(text: str) -> Any:
    """One YAML document read with the safe loader; YamlRefused (YamlSyntax if not YAML) says why not."""
    loader = None
    try:
        loader = _Loader(text)  # its reader already refuses control characters
        node = loader.get_single_node()
        if node is None:
            return None
        loader.check(node)
        return loader.construct_document(node)
    except yaml.YAMLError as err:
        raise _syntax(err, text) from None
    except RecursionError:  # a second guard: compose_node limits the depth first
        raise YamlRefused(f"nests too deep; options nest at most 3 levels (limit {MAX_DEPTH})") from None
    finally:
        if loader is not None:
            loader.dispose()


def holds_comment(text: str) -> bool:
    """Whether YAML `text` (valid) holds a comment: a '#' outside every token (`#3`, `run #3`)."""
    if "#" not in text:  # every --set value is asked: most hold none, and need no second scan
        return False
    spans = [(t.start_mark.index, t.end_mark.index) for t in yaml.scan(text, Loader=yaml.SafeLoader)]
    return any(not any(a <= i < b for a, b in spans) for i, ch in enumerate(text) if ch == "#")


def decode_text(data: bytes) -> str:
    """UTF-8 (a byte-order mark is allowed, editors on Windows write one) or YamlRefused."""
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise YamlRefused("is not UTF-8 text (it is UTF-16 or UTF-32); save it as UTF-8")
    if b"\0" in data:  # valid UTF-8, but no text file holds NUL bytes: UTF-16 without a byte-order mark
        raise YamlRefused("is not UTF-8 text (it holds NUL bytes: UTF-16, or not text at all); save it as UTF-8")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise YamlRefused(f"is not UTF-8 text (byte 0x{data[err.start]:02x}, line {line}); save it as UTF-8") from None


def read_yaml_file(path: str | os.PathLike[str], example: str = "options/train_student.yml") -> Any:
    """The YAML document in a regular file of at most MAX_BYTES; YamlRefused says what is wrong with it."""
    path = Path(path)
    try:
        info = path.stat()  # before opening: opening a named pipe would wait for a writer forever
    except (FileNotFoundError, NotADirectoryError):
        raise YamlRefused(f"not found; start from {example}") from None
    except OSError as err:
        raise YamlRefused(f"cannot be read ({err.strerror})") from None
    if stat.S_ISDIR(info.st_mode):
        raise YamlRefused(f"is a directory; give an options file such as {example}")
    if not stat.S_ISREG(info.st_mode):
        raise YamlRefused(f"is not a regular file (a pipe, socket or device); give an options file such as {example}")
    if info.st_size > MAX_BYTES:
        raise YamlRefused(f"is {info.st_size} bytes, over the {MAX_BYTES}-byte limit; "
                          "an options file is a few kilobytes")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as err:
        raise YamlRefused(f"cannot be read ({err.strerror})") from None
    if len(data) > MAX_BYTES:  # it grew after stat
        raise YamlRefused(f"is over the {MAX_BYTES}-byte limit; an options file is a few kilobytes")
    return load_yaml(decode_text(data))
