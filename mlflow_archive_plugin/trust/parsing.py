"""Bounded parsing of the documents an archive carries: JSON, YAML and Python source.

An archive's documents are untrusted, and the standard parsers spend memory and stack in
proportion to nesting and alias expansion before anything can check the result. Each loader
here checks size first, then measures nesting and expansion with the parser's own token or
event stream (which never builds the tree), and only then parses. A document past a limit is
refused with :class:`UnsafeArchiveError`, a document that does not parse with
:class:`CorruptArchiveError`; both name the document (``what``) in a single line.
"""

from __future__ import annotations

import ast
import io
import json
import keyword
import re
import tokenize
from itertools import accumulate
from typing import Any

import yaml

from mlflow_archive_plugin.errors import CorruptArchiveError, UnsafeArchiveError

# The metadata document holds full metric histories, so JSON may be as large as the
# archive reader lets any captured document be (archive.MAX_DOCUMENT_BYTES).
JSON_MAX_BYTES = 64 * 1024**2
# MLmodel, model.yaml and the other YAML files are a few kilobytes; a large signature is
# one scalar, so a megabyte-sized budget still leaves room for it.
YAML_MAX_BYTES = 4 * 1024**2
# Hooks and predict.py are small hand-written modules.
PYTHON_MAX_BYTES = 1024**2
MAX_DEPTH = 100
# Real MLmodel and model.yaml files use no aliases; a few for hand-written files.
YAML_MAX_ALIASES = 100
# Every node the loaded document holds, counting what each alias repeats: this is what
# bounds a "billion laughs" document, whose aliases are few but expand exponentially.
YAML_MAX_NODES = 100_000

_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)
_NOT_A_BRACKET = re.compile(r"[^\[\]{}]+")
_BRACKET_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}
_FSTRING_PREFIX = re.compile(r"^[A-Za-z]*[fF][A-Za-z]*['\"]")
_FSTRING_OPERATOR = re.compile(r"[-+~*/%@&|^<>=!.:()\[\]{}]|\b(?:" + "|".join(
    name for name in keyword.kwlist if name not in ("True", "False", "None")) + r")\b")
_ATOM_KEYWORDS = frozenset({"True", "False", "None"})


def load_json(
    data: bytes | str, *, what: str, max_bytes: int = JSON_MAX_BYTES, max_depth: int = MAX_DEPTH
) -> Any:
    """Parse a JSON document from an archive, refusing one too large or nested too deeply.

    ``what`` names the document in messages (``"mlflow-archive.json"``). Raises
    :class:`UnsafeArchiveError` past ``max_bytes`` or ``max_depth`` levels of arrays and
    objects, :class:`CorruptArchiveError` when it is not valid JSON.
    """
    _check_size(data, what=what, kind="JSON", max_bytes=max_bytes)
    text = _json_text(data, what=what)
    if _json_depth(text) > max_depth:
        _refuse(what, f"JSON nests deeper than {max_depth} levels")
    try:
        return json.loads(text)
    except ValueError as exc:
        raise _damaged(what, "JSON", _one_line(exc)) from None


def load_yaml(
    data: bytes | str,
    *,
    what: str,
    max_bytes: int = YAML_MAX_BYTES,
    max_depth: int = MAX_DEPTH,
    max_aliases: int = YAML_MAX_ALIASES,
    max_nodes: int = YAML_MAX_NODES,
) -> Any:
    """Safe-load a YAML document from an archive, refusing one that could exhaust the machine.

    ``what`` names the document in messages (``"model/MLmodel"``). Raises
    :class:`UnsafeArchiveError` past ``max_bytes``, ``max_depth`` levels of collections,
    ``max_aliases`` alias uses, ``max_nodes`` nodes once every alias is expanded, or for an
    alias inside the node it names; :class:`CorruptArchiveError` when it is not valid YAML.
    Only plain data is built (``yaml.SafeLoader``): no tags that construct objects.
    """
    _check_size(data, what=what, kind="YAML", max_bytes=max_bytes)
    text = _utf8_text(data, what=what)
    try:
        _YamlBudget(what, max_depth=max_depth, max_aliases=max_aliases,
                    max_nodes=max_nodes).check(yaml.parse(text, Loader=yaml.SafeLoader))
        return yaml.load(text, Loader=yaml.SafeLoader)  # noqa: S506 - SafeLoader
    except yaml.YAMLError as exc:
        raise _damaged(what, "YAML", _yaml_problem(exc)) from None



def load_mlmodel(data: bytes | str, *, what: str) -> dict[str, Any]:
    """An ``MLmodel`` document parsed by :func:`load_yaml` (its limits), which must be a
    mapping: :class:`CorruptArchiveError` when it is not."""
    document = load_yaml(data, what=what)
    if not isinstance(document, dict):
        raise CorruptArchiveError(f"{what} is not a YAML mapping")
    return document


def parse_python(
    source: bytes | str,
    *,
    what: str,
    max_bytes: int = PYTHON_MAX_BYTES,
    max_depth: int = MAX_DEPTH,
) -> ast.Module:
    """Parse Python source from an archive with :func:`ast.parse`, within limits.

    ``what`` names the file in messages and is the tree's filename. The nesting is measured
    on the token stream first, as an upper bound of the syntax tree's depth (blocks, ``elif``
    chains, brackets, operators and keywords), because CPython's parser runs out of stack or
    memory on deeply nested expressions before it can say so. Raises
    :class:`UnsafeArchiveError` past ``max_bytes`` or ``max_depth``,
    :class:`CorruptArchiveError` when it is not valid Python.
    """
    _check_size(source, what=what, kind="Python source", max_bytes=max_bytes)
    try:
        if _python_depth_exceeds(source, max_depth):
            _refuse(what, f"Python source nests deeper than {max_depth} levels")
        return ast.parse(source, filename=what)
    except (SyntaxError, tokenize.TokenError, ValueError, UnicodeDecodeError) as exc:
        raise _damaged(what, "Python", _one_line(exc)) from None


def _damaged(what: str, kind: str, problem: str) -> CorruptArchiveError:
    return CorruptArchiveError(f"{what} is not valid {kind} ({problem}); the archive is damaged")


def _refuse(what: str, reason: str) -> None:
    error = UnsafeArchiveError(f"refused {what}: {reason}; the archive is unsafe")
    error.reason = reason
    raise error


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if mark is None or problem is None:
        return _one_line(exc)
    return f"{_one_line(problem)} at line {mark.line + 1}, column {mark.column + 1}"


def _check_size(data: bytes | str, *, what: str, kind: str, max_bytes: int) -> None:
    # A str can only be longer in UTF-8 than in characters, so the cheap test comes first.
    size = len(data)
    if size <= max_bytes and isinstance(data, str):
        size = len(data.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        _refuse(what, f"{kind} larger than {max_bytes} bytes")


def _utf8_text(data: bytes | str, *, what: str) -> str:
    if isinstance(data, str):
        return data
    return _decode(data, "utf-8", what=what)


def _json_text(data: bytes | str, *, what: str) -> str:
    if isinstance(data, str):
        return data
    # The same encodings json.loads accepts for bytes (UTF-8, -16, -32, with or without BOM).
    return _decode(data, json.detect_encoding(data), what=what)


def _decode(data: bytes, encoding: str, *, what: str) -> str:
    try:
        return data.decode(encoding, "strict")
    except UnicodeDecodeError:
        raise CorruptArchiveError(f"{what} is not {encoding.upper()} text; the archive is "
                                  "damaged") from None


def _json_depth(text: str) -> int:
    """Deepest nesting of arrays and objects, with brackets inside strings ignored.

    An unterminated string swallows the rest, so a malformed document is measured as shallow
    and left to json to reject; the optional closing quote keeps the scan linear.
    """
    brackets = _NOT_A_BRACKET.sub("", _JSON_STRING.sub("", text))
    return max(accumulate(_BRACKET_STEP[char] for char in brackets), default=0)


class _YamlBudget:
    """Walks PyYAML's event stream (no nodes built) and refuses what would load too big."""

    def __init__(self, what: str, *, max_depth: int, max_aliases: int, max_nodes: int) -> None:
        self.what = what
        self.max_depth = max_depth
        self.max_aliases = max_aliases
        self.max_nodes = max_nodes
        # anchor -> (expanded node count, height) of the node it names, once complete
        self.anchors: dict[str, tuple[int, int]] = {}
        # one [anchor, expanded node count, height of tallest child] per open collection
        self.open: list[list[Any]] = [[None, 0, 0]]
        self.aliases = 0
        self.nodes = 0

    def check(self, events: Any) -> None:
        """Consume ``events`` and raise at the first one that passes a limit."""
        for event in events:
            if isinstance(event, yaml.AliasEvent):
                self._alias(event.anchor)
            elif isinstance(event, yaml.ScalarEvent):
                self._node(event.anchor, size=1, height=0)
            elif isinstance(event, yaml.CollectionStartEvent):
                self._count(1)
                self.open.append([event.anchor, 1, 0])
                if len(self.open) - 1 > self.max_depth:
                    _refuse(self.what, f"YAML nests deeper than {self.max_depth} levels")
            elif isinstance(event, yaml.CollectionEndEvent):
                anchor, size, height = self.open.pop()
                self._add(anchor, size, height + 1)

    def _alias(self, anchor: str) -> None:
        self.aliases += 1
        if self.aliases > self.max_aliases:
            _refuse(self.what, f"YAML uses more than {self.max_aliases} aliases" if self.max_aliases
                    else "YAML uses an alias, and none are allowed in it")
        if any(entry[0] == anchor for entry in self.open):
            _refuse(self.what, f"YAML alias *{anchor} is inside the node it repeats")
        # An undefined alias is left for the loader to report as malformed.
        size, height = self.anchors.get(anchor, (1, 0))
        if len(self.open) - 1 + height > self.max_depth:
            _refuse(self.what, f"YAML nests deeper than {self.max_depth} levels")
        self._count(size)
        self._add(None, size, height)

    def _node(self, anchor: str | None, *, size: int, height: int) -> None:
        self._count(size)
        self._add(anchor, size, height)

    def _count(self, size: int) -> None:
        self.nodes += size
        if self.nodes > self.max_nodes:
            reason = (f"YAML aliases expand to more than {self.max_nodes} nodes "
                      "(a \"billion laughs\")" if self.aliases
                      else f"YAML holds more than {self.max_nodes} nodes")
            _refuse(self.what, reason)

    def _add(self, anchor: str | None, size: int, height: int) -> None:
        if anchor is not None:
            self.anchors[anchor] = (size, height)
        parent = self.open[-1]
        parent[1] += size
        parent[2] = max(parent[2], height)


def _python_depth_exceeds(source: bytes | str, max_depth: int) -> bool:
    """Whether an upper bound of the syntax tree's depth, read from tokens, passes ``max_depth``.

    Every operator, keyword, bracket and call trailer may add one level to an expression;
    every block adds one, and so does each ``elif`` of a chain (CPython nests them). The scan
    stops at the first token past the limit, so a hostile file costs little.
    """
    return any(depth > max_depth for depth in _python_depths(source))


def _python_depths(source: bytes | str) -> Any:
    if isinstance(source, bytes):
        tokens = tokenize.tokenize(io.BytesIO(source).readline)
    else:
        tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    chains = [0]  # per indentation level: extra levels of the current elif/except chain
    frames: list[list[int]] = []  # per open bracket: [levels above it, operators in element]
    for token in tokens:
        kind, text = token.type, token.string
        if kind == tokenize.INDENT:
            chains.append(0)
        elif kind == tokenize.DEDENT:
            chains.pop()
        elif kind in (tokenize.NEWLINE, tokenize.ENDMARKER):
            frames = []
        elif kind in (tokenize.NL, tokenize.COMMENT, tokenize.ENCODING):
            continue
        else:
            if not frames:
                frames = [[_statement_depth(chains, text), 0]]
            yield _python_token(frames, kind, text)


def _statement_depth(chains: list[int], first: str) -> int:
    if first == "elif":
        chains[-1] += 1
    elif first in ("except", "case"):
        chains[-1] = max(chains[-1], 1)
    elif first not in ("else", "finally"):
        chains[-1] = 0
    return sum(chains) + len(chains)


def _python_token(frames: list[list[int]], kind: int, text: str) -> int:
    top = frames[-1]
    if kind == tokenize.OP and text in "([{":
        frames.append([top[0] + top[1] + 1, 0])
    elif kind == tokenize.OP and text in ")]}" and len(frames) > 1:
        frames.pop()
        frames[-1][1] += 1  # a call or subscript trailer wraps what precedes it
    elif kind == tokenize.OP and text in (",", ";", "="):
        top[1] = 0  # the parts of a tuple, call, chained assignment or line are siblings
    elif kind == tokenize.OP or (keyword.iskeyword(text) and text not in _ATOM_KEYWORDS):
        top[1] += 1
    elif kind == tokenize.STRING and _FSTRING_PREFIX.match(text):
        # Before Python 3.12 an f-string is one token whose fields CPython parses on its own.
        top[1] += sum(len(_FSTRING_OPERATOR.findall(field)) for field in _fstring_fields(text))
    top = frames[-1]
    return top[0] + top[1]


def _fstring_fields(token: str) -> list[str]:
    """The text of each replacement field of an f-string token, found as CPython 3.11 does.

    A field ends at the ``}`` that closes its ``{`` outside brackets and quoted strings;
    ``{{`` and ``}}`` outside a field are literal braces.
    """
    fields: list[str] = []
    start = -1
    nesting = 0
    quote = ""
    index = 0
    while index < len(token):
        char = token[index]
        if start < 0:
            if char == "{" and token.startswith("{{", index):
                index += 1
            elif char == "{":
                start, nesting = index + 1, 0
        elif quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char in "([{":
            nesting += 1
        elif char in ")]}" and nesting:
            nesting -= 1
        elif char == "}":
            fields.append(token[start:index])
            start = -1
        index += 1
    if start >= 0:
        fields.append(token[start:])
    return fields
