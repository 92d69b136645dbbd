"""Compile-time checks of CRD CEL rules the way kube-apiserver does them, independent of synthrec.

kube-apiserver compiles every ``x-kubernetes-validations`` rule with cel-go in an environment whose
``self`` (and ``oldSelf``) has the type derived from the schema (k8s.io/apiserver ``cel/common/schemas.go``
``SchemaDeclType``), rejects rules that do not type-check or do not return a bool, and rejects rules
whose *estimated* cost (cel-go ``checker/cost.go`` with the schema's maxLength/maxItems/maxProperties as
size bounds) times the number of times the rule can run exceeds the limits.

Syntax is checked by the ``common-expression-language`` package (cel-rust), which the emulator also
uses to run the rules. cel-rust has no type checker and no cost estimator, so this module carries a small
CEL parser (the grammar of cel-spec ``syntax.md``), a type checker for the functions CRD rules use, and a
port of cel-go's cost estimator. synthrec's own validator (cel-python, ``synthrec.api.cel``) is not used:
the two implementations check each other.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import cel as cel_rust

MAX_REQUEST_SIZE_BYTES = 3 * 1024 * 1024  # celconfig.MaxRequestSizeBytes
MAX_UINT64 = 2**64 - 1
STRING_TRAVERSAL_COST_FACTOR = 0.1
REGEX_STRING_LENGTH_COST_FACTOR = 0.25
LIST_CREATE_BASE_COST = 10
MAP_CREATE_BASE_COST = 30
MIN_STRING_SIZE = 2  # ""
MIN_NUMBER_SIZE = 1
MIN_BOOL_SIZE = 4  # true
MAX_DATETIME_SIZE_JSON = 35  # apiserver/pkg/cel/types.go
MAX_DURATION_SIZE_JSON = 32
JSON_DATE_SIZE = 12


class CelCompileError(Exception):
    """A rule kube-apiserver would not compile; the message reads like cel-go's issues."""


# ------------------------------------------------------------------------------------------- types


@dataclass
class DeclType:
    """A CEL type derived from a schema node (``apiservercel.DeclType``)."""

    kind: str  # bool int uint double string bytes null dyn list map object timestamp duration type
    elem: DeclType | None = None  # list element / map value
    fields: dict[str, DeclType] = field(default_factory=dict)
    max_elements: int | None = None  # schema-derived size bound (None: not a schema-derived type)
    min_size: int = 1  # MinSerializedSize

    def __str__(self) -> str:
        if self.kind == "list":
            return f"list({self.elem})"
        if self.kind == "map":
            return f"map(string, {self.elem})"
        return self.kind


DYN = DeclType("dyn")
BOOL, INT, UINT, DOUBLE = DeclType("bool"), DeclType("int"), DeclType("uint"), DeclType("double")
STRING, BYTES, NULL = DeclType("string"), DeclType("bytes"), DeclType("null")
SCALARS = ("bool", "int", "uint", "double", "null", "timestamp", "duration")
NUMERIC = ("int", "uint", "double")


def _zero_if_negative(value: int) -> int:
    return max(0, value)


def _max_string_length(schema: dict[str, Any]) -> int:
    fmt = schema.get("format")
    if schema.get("x-kubernetes-int-or-string"):
        return MAX_REQUEST_SIZE_BYTES - 2
    if fmt == "duration":
        return MAX_DURATION_SIZE_JSON
    if fmt == "date":
        return JSON_DATE_SIZE
    if fmt == "date-time":
        return MAX_DATETIME_SIZE_JSON
    return MAX_REQUEST_SIZE_BYTES - 2


def with_type_and_object_meta(schema: dict[str, Any]) -> dict[str, Any]:
    """At a resource root, apiVersion, kind, metadata.name and metadata.generateName are always visible."""
    props = dict(schema.get("properties") or {})
    props["apiVersion"] = {"type": "string"}
    props["kind"] = {"type": "string"}
    meta_props = dict((props.get("metadata") or {}).get("properties") or {})
    meta_props.setdefault("name", {"type": "string"})
    meta_props.setdefault("generateName", {"type": "string"})
    props["metadata"] = {"type": "object", "properties": meta_props}
    return {**schema, "properties": props}


def schema_decl_type(schema: dict[str, Any] | None, resource_root: bool = False) -> DeclType | None:
    """Port of ``SchemaDeclType``: the CEL type of values of ``schema``; None when CEL cannot see it."""
    if schema is None:
        return None
    if schema.get("x-kubernetes-int-or-string"):
        bound = schema.get("maxLength")
        max_elements = _zero_if_negative(bound) * 4 if bound is not None else _max_string_length(schema)
        return DeclType("dyn", max_elements=max_elements, min_size=1)
    if resource_root:
        schema = with_type_and_object_meta(schema)
    kind = schema.get("type")
    if kind == "array":
        items = schema.get("items")
        if not isinstance(items, dict):
            return None
        item_type = schema_decl_type(items, bool(items.get("x-kubernetes-embedded-resource")))
        if item_type is None:
            return None
        max_items = schema.get("maxItems")
        bound = (
            _zero_if_negative(max_items)
            if max_items is not None
            else (MAX_REQUEST_SIZE_BYTES - 2) // (item_type.min_size + 1)
        )
        return DeclType("list", elem=item_type, max_elements=bound, min_size=2)
    if kind == "object":
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            value_type = schema_decl_type(extra, bool(extra.get("x-kubernetes-embedded-resource")))
            if value_type is None:
                return None
            max_props = schema.get("maxProperties")
            bound = (
                _zero_if_negative(max_props)
                if max_props is not None
                else (MAX_REQUEST_SIZE_BYTES - 2) // (value_type.min_size + 6)
            )
            return DeclType("map", elem=value_type, max_elements=bound, min_size=2)
        required = set(schema.get("required") or ())
        fields: dict[str, DeclType] = {}
        min_size = 2
        for name, prop in (schema.get("properties") or {}).items():
            prop_type = schema_decl_type(prop, bool(prop.get("x-kubernetes-embedded-resource")))
            if prop_type is None:
                continue
            fields[name] = prop_type
            if name in required and "default" not in prop:
                min_size += len(name) + prop_type.min_size + 4
        return DeclType("object", fields=fields, max_elements=0, min_size=min_size)
    if kind == "string":
        fmt = schema.get("format")
        if fmt == "byte":
            bound = schema.get("maxLength")
            limit = _zero_if_negative(bound) if bound is not None else _max_string_length(schema)
            return DeclType("bytes", max_elements=limit, min_size=MIN_STRING_SIZE)
        if fmt == "duration":
            return DeclType("duration", max_elements=_max_string_length(schema), min_size=2)
        if fmt in ("date", "date-time"):
            return DeclType("timestamp", max_elements=_max_string_length(schema), min_size=JSON_DATE_SIZE)
        if schema.get("maxLength") is not None:
            limit = _zero_if_negative(schema["maxLength"]) * 4
        elif schema.get("enum"):
            limit = max((len(v) for v in schema["enum"] if isinstance(v, str)), default=0)
        else:
            limit = _max_string_length(schema)
        return DeclType("string", max_elements=limit, min_size=MIN_STRING_SIZE)
    if kind == "boolean":
        return DeclType("bool", min_size=MIN_BOOL_SIZE)
    if kind == "number":
        return DeclType("double", min_size=MIN_NUMBER_SIZE)
    if kind == "integer":
        return DeclType("int", min_size=MIN_NUMBER_SIZE)
    return None


# ------------------------------------------------------------------------------------------ parser


@dataclass
class Node:
    kind: str  # lit ident select call list map comp
    pos: int
    value: Any = None  # literal value; identifier/field/function name
    lit_type: str = ""  # for literals
    target: Node | None = None  # select operand / member call target
    args: list[Node] = field(default_factory=list)
    test_only: bool = False  # has()
    var: str = ""  # comprehension variable
    macro: str = ""  # all exists exists_one map filter


_TOKEN = re.compile(
    r"""
    (?P<ws>\s+|//[^\n]*)
  | (?P<num>0[xX][0-9a-fA-F]+[uU]?|(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?[uU]?)
  | (?P<str>[rRbB]{0,2}(?:'''(?:.|\n)*?'''|\"\"\"(?:.|\n)*?\"\"\"|'(?:\\.|[^'\\\n])*'|"(?:\\.|[^"\\\n])*"))
  | (?P<ident>[_a-zA-Z][_a-zA-Z0-9]*)
  | (?P<op>==|!=|<=|>=|&&|\|\||[-+*/%!<>?:.,()\[\]{}])
    """,
    re.VERBOSE,
)
_RESERVED = {
    "as", "break", "const", "continue", "else", "for", "function", "if", "import", "let", "loop",
    "package", "namespace", "return", "var", "void", "while",
}  # fmt: skip
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"', "`": "`", "?": "?", "a": "\a"}
_ESCAPES |= {"b": "\b", "f": "\f", "v": "\v"}


def _unquote(text: str) -> tuple[str, Any]:
    prefix = ""
    while text[0] in "rRbB":
        prefix += text[0].lower()
        text = text[1:]
    quote = text[:3] if text[:3] in ("'''", '"""') else text[0]
    body = text[len(quote) : -len(quote)]
    if "r" not in prefix:
        body = re.sub(
            r"\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|[0-7]{3}|.)",
            lambda m: (
                chr(int(m.group(1)[1:], 16))
                if m.group(1)[0] in "xuU" and len(m.group(1)) > 1
                else chr(int(m.group(1), 8))
                if m.group(1)[0].isdigit()
                else _ESCAPES.get(m.group(1), "\\" + m.group(1))
            ),
            body,
        )
    return ("bytes" if "b" in prefix else "string"), body


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens: list[tuple[str, str, int]] = []
        pos = 0
        while pos < len(text):
            match = _TOKEN.match(text, pos)
            if match is None:
                raise self.error(pos, f"token recognition error at: '{text[pos]}'")
            if match.lastgroup != "ws":
                self.tokens.append((str(match.lastgroup), match.group(), pos))
            pos = match.end()
        self.tokens.append(("eof", "<EOF>", len(text)))
        self.i = 0

    def error(self, pos: int, message: str) -> CelCompileError:
        line = self.text.count("\n", 0, pos) + 1
        column = pos - (self.text.rfind("\n", 0, pos) + 1) + 1
        return CelCompileError(f"ERROR: <input>:{line}:{column}: {message}")

    def peek(self) -> tuple[str, str, int]:
        return self.tokens[self.i]

    def take(self, text: str | None = None) -> tuple[str, str, int]:
        token = self.tokens[self.i]
        if text is not None and token[1] != text:
            raise self.error(token[2], f"Syntax error: mismatched input '{token[1]}' expecting '{text}'")
        self.i += 1
        return token

    def at(self, *texts: str) -> bool:
        kind, text, _ = self.tokens[self.i]
        return kind in ("op", "ident") and text in texts

    def parse(self) -> Node:
        node = self.expr()
        if self.peek()[0] != "eof":
            raise self.error(self.peek()[2], f"Syntax error: extraneous input '{self.peek()[1]}'")
        return node

    def expr(self) -> Node:
        cond = self.binary(0)
        if self.at("?"):
            pos = self.take()[2]
            then = self.binary(0)
            self.take(":")
            other = self.expr()
            return Node("call", pos, "_?_:_", args=[cond, then, other])
        return cond

    _LEVELS = (("||",), ("&&",), ("<", "<=", ">", ">=", "==", "!=", "in"), ("+", "-"), ("*", "/", "%"))

    def binary(self, level: int) -> Node:
        if level == len(self._LEVELS):
            return self.unary()
        left = self.binary(level + 1)
        while self.at(*self._LEVELS[level]):
            _, op, pos = self.take()
            right = self.binary(level + 1)
            name = "@in" if op == "in" else f"_{op}_"
            left = Node("call", pos, name, args=[left, right])
        return left

    def unary(self) -> Node:
        if self.at("!", "-"):
            _, op, pos = self.take()
            operand = self.unary()
            if op == "-" and operand.kind == "lit" and operand.lit_type in ("int", "double"):
                return Node("lit", pos, -operand.value, lit_type=operand.lit_type)
            return Node("call", pos, "!_" if op == "!" else "-_", args=[operand])
        return self.member()

    def member(self) -> Node:
        node = self.primary()
        while True:
            if self.at("."):
                self.take()
                kind, name, pos = self.take()
                if kind != "ident":
                    raise self.error(pos, f"Syntax error: mismatched input '{name}' expecting IDENTIFIER")
                if self.at("("):
                    args = self.call_args()
                    node = self.member_call(node, name, args, pos)
                else:
                    node = Node("select", pos, name, target=node)
            elif self.at("["):
                pos = self.take()[2]
                index = self.expr()
                self.take("]")
                node = Node("call", pos, "_[_]", args=[node, index])
            else:
                return node

    def call_args(self) -> list[Node]:
        self.take("(")
        args: list[Node] = []
        while not self.at(")"):
            args.append(self.expr())
            if not self.at(")"):
                self.take(",")
        self.take(")")
        return args

    def member_call(self, target: Node, name: str, args: list[Node], pos: int) -> Node:
        if name in ("all", "exists", "exists_one", "map", "filter"):
            wanted = (2, 3) if name == "map" else (2,)
            if len(args) not in wanted or args[0].kind != "ident":
                raise self.error(pos, f"{name}() macro: argument must be a simple name")
            return Node("comp", pos, name, target=target, args=args[1:], var=args[0].value, macro=name)
        return Node("call", pos, name, target=target, args=args)

    def primary(self) -> Node:
        kind, text, pos = self.take()
        if kind == "num":
            if text.lower().endswith("u"):
                return Node("lit", pos, int(text[:-1], 0), lit_type="uint")
            if re.fullmatch(r"0[xX][0-9a-fA-F]+|\d+", text):
                return Node("lit", pos, int(text, 0), lit_type="int")
            return Node("lit", pos, float(text), lit_type="double")
        if kind == "str":
            lit_type, value = _unquote(text)
            return Node("lit", pos, value, lit_type=lit_type)
        if kind == "ident":
            if text in ("true", "false"):
                return Node("lit", pos, text == "true", lit_type="bool")
            if text == "null":
                return Node("lit", pos, None, lit_type="null")
            if text in _RESERVED:
                raise self.error(pos, f"reserved identifier: {text}")
            if self.at("("):
                args = self.call_args()
                if text == "has":
                    if len(args) != 1 or args[0].kind != "select":
                        raise self.error(pos, "invalid argument to has() macro")
                    inner = args[0]
                    return Node("select", inner.pos, inner.value, target=inner.target, test_only=True)
                return Node("call", pos, text, args=args)
            return Node("ident", pos, text)
        if text == "(":
            node = self.expr()
            self.take(")")
            return node
        if text == "[":
            items: list[Node] = []
            while not self.at("]"):
                items.append(self.expr())
                if not self.at("]"):
                    self.take(",")
            self.take("]")
            return Node("list", pos, args=items)
        if text == "{":
            entries: list[Node] = []
            while not self.at("}"):
                entries.append(self.expr())
                self.take(":")
                entries.append(self.expr())
                if not self.at("}"):
                    self.take(",")
            self.take("}")
            return Node("map", pos, args=entries)
        raise self.error(pos, f"Syntax error: mismatched input '{text}'")


def parse(rule: str) -> Node:
    return _Parser(rule).parse()


# -------------------------------------------------------------------------------------- type check

# Receiver functions: name -> (receiver kinds, result, argument kinds)
_MEMBER_FUNCTIONS: dict[str, tuple[tuple[str, ...], DeclType, tuple[str, ...] | None]] = {
    "contains": (("string",), BOOL, ("string",)),
    "startsWith": (("string",), BOOL, ("string",)),
    "endsWith": (("string",), BOOL, ("string",)),
    "matches": (("string",), BOOL, ("string",)),
    "size": (("string", "bytes", "list", "map"), INT, ()),
    "lowerAscii": (("string",), STRING, ()),
    "upperAscii": (("string",), STRING, ()),
    "trim": (("string",), STRING, ()),
    "indexOf": (("string",), INT, ("string",)),
    "lastIndexOf": (("string",), INT, ("string",)),
    "isSorted": (("list",), BOOL, ()),
}
_CONVERSIONS = {"int": INT, "uint": UINT, "double": DOUBLE, "string": STRING, "bytes": BYTES, "bool": BOOL}


class _Checker:
    def __init__(self, text: str, variables: dict[str, DeclType]) -> None:
        self.text = text
        self.scopes: list[dict[str, DeclType]] = [variables]
        self.types: dict[int, DeclType] = {}

    def error(self, node: Node, message: str) -> CelCompileError:
        pos = node.pos
        line = self.text.count("\n", 0, pos) + 1
        column = pos - (self.text.rfind("\n", 0, pos) + 1) + 1
        return CelCompileError(f"ERROR: <input>:{line}:{column}: {message}")

    def lookup(self, name: str) -> DeclType | None:
        for scope in reversed(self.scopes):
            if name in scope:
                return scope[name]
        return None

    def check(self, node: Node) -> DeclType:
        result = self._check(node)
        self.types[id(node)] = result
        return result

    def _check(self, node: Node) -> DeclType:
        if node.kind == "lit":
            return DeclType(node.lit_type)
        if node.kind == "ident":
            found = self.lookup(node.value)
            if found is None:
                raise self.error(node, f"undeclared reference to '{node.value}' (in container '')")
            return found
        if node.kind == "select":
            assert node.target is not None
            operand = self.check(node.target)
            if operand.kind == "object":
                if node.value not in operand.fields:
                    raise self.error(node, f"undefined field '{node.value}'")
                return BOOL if node.test_only else operand.fields[node.value]
            if operand.kind == "map":
                return BOOL if node.test_only else (operand.elem or DYN)
            if operand.kind == "dyn":
                return BOOL if node.test_only else DYN
            raise self.error(node, f"type '{operand}' does not support field selection")
        if node.kind == "list":
            elems = [self.check(a) for a in node.args]
            return DeclType("list", elem=elems[0] if elems and _same(elems) else DYN)
        if node.kind == "map":
            values = [self.check(a) for a in node.args]
            return DeclType("map", elem=DYN if not values else values[1])
        if node.kind == "comp":
            return self._check_comprehension(node)
        return self._check_call(node)

    def _check_comprehension(self, node: Node) -> DeclType:
        assert node.target is not None
        rng = self.check(node.target)
        if rng.kind == "list":
            var_type = rng.elem or DYN
        elif rng.kind == "map":
            var_type = STRING
        elif rng.kind == "dyn":
            var_type = DYN
        else:
            raise self.error(node, f"expression of type '{rng}' cannot be range of a comprehension")
        self.scopes.append({node.var: var_type})
        try:
            body = [self.check(a) for a in node.args]
        finally:
            self.scopes.pop()
        predicate_count = 2 if node.macro == "map" and len(node.args) == 2 else 1
        has_predicate = node.macro in ("all", "exists", "exists_one", "filter") or predicate_count == 2
        if has_predicate and body[0].kind not in ("bool", "dyn"):
            raise self.error(node, f"found no matching overload for '_&&_' applied to '(bool, {body[0]})'")
        if node.macro in ("all", "exists", "exists_one"):
            return BOOL
        if node.macro == "filter":
            return DeclType("list", elem=var_type)
        return DeclType("list", elem=body[-1])

    def _check_call(self, node: Node) -> DeclType:
        name = node.value
        args = [self.check(a) for a in node.args]
        target = self.check(node.target) if node.target is not None else None
        kinds = [a.kind for a in args]

        def no_overload() -> CelCompileError:
            shown = ", ".join(str(t) for t in ([target] if target else []) + args)
            return self.error(node, f"found no matching overload for '{name}' applied to '({shown})'")

        if target is not None:
            spec = _MEMBER_FUNCTIONS.get(name)
            if spec is None:
                raise self.error(node, f"undeclared reference to '{name}' (in container '')")
            receivers, result, arg_kinds = spec
            if target.kind != "dyn" and target.kind not in receivers:
                raise no_overload()
            if arg_kinds is not None and (
                len(args) != len(arg_kinds)
                or any(k not in (w, "dyn") for k, w in zip(kinds, arg_kinds, strict=True))
            ):
                raise no_overload()
            return result
        if name in ("_&&_", "_||_", "!_"):
            if any(k not in ("bool", "dyn") for k in kinds):
                raise no_overload()
            return BOOL
        if name == "_?_:_":
            if kinds[0] not in ("bool", "dyn"):
                raise no_overload()
            return args[1] if _same(args[1:]) else DYN
        if name in ("_==_", "_!=_"):
            if not _comparable(args[0], args[1]):
                raise no_overload()
            return BOOL
        if name in ("_<_", "_<=_", "_>_", "_>=_"):
            both_numeric = all(k in (*NUMERIC, "dyn") for k in kinds)
            same_ordered = kinds[0] == kinds[1] and kinds[0] in ("string", "bytes", "bool", "timestamp")
            if not (both_numeric or same_ordered or "dyn" in kinds):
                raise no_overload()
            return BOOL
        if name in ("_+_", "_-_", "_*_", "_/_", "_%_"):
            if "dyn" in kinds:
                return DYN
            if kinds[0] != kinds[1]:
                raise no_overload()
            allowed = {"_+_": (*NUMERIC, "string", "bytes", "list")}.get(name, NUMERIC)
            if name == "_%_":
                allowed = ("int", "uint")
            if kinds[0] not in allowed:
                raise no_overload()
            return args[0] if kinds[0] != "list" else DeclType("list", elem=DYN)
        if name == "-_":
            if kinds[0] not in ("int", "double", "dyn"):
                raise no_overload()
            return args[0]
        if name == "@in":
            if kinds[1] not in ("list", "map", "dyn"):
                raise no_overload()
            return BOOL
        if name == "_[_]":
            container = args[0]
            if container.kind == "list" and kinds[1] in ("int", "uint", "dyn"):
                return container.elem or DYN
            if container.kind == "map" and kinds[1] in ("string", "dyn"):
                return container.elem or DYN
            if container.kind == "dyn":
                return DYN
            raise no_overload()
        if name == "size":
            if len(args) != 1 or kinds[0] not in ("string", "bytes", "list", "map", "dyn"):
                raise no_overload()
            return INT
        if name in _CONVERSIONS:
            return _CONVERSIONS[name]
        if name in ("dyn", "type"):
            return DYN
        raise self.error(node, f"undeclared reference to '{name}' (in container '')")


def _same(types: list[DeclType]) -> bool:
    return all(str(t) == str(types[0]) for t in types)


def _comparable(a: DeclType, b: DeclType) -> bool:
    if "dyn" in (a.kind, b.kind) or "null" in (a.kind, b.kind):
        return True
    if a.kind in NUMERIC and b.kind in NUMERIC:
        return True  # cross-type numeric comparisons are on in the Kubernetes environment
    if a.kind != b.kind:
        return False
    if a.kind in ("list", "map"):
        return _comparable(a.elem or DYN, b.elem or DYN)
    return True


# -------------------------------------------------------------------------------------------- cost


@dataclass(frozen=True)
class Estimate:
    min: int
    max: int

    def __add__(self, other: Estimate) -> Estimate:
        return Estimate(_add(self.min, other.min), _add(self.max, other.max))

    def union(self, other: Estimate) -> Estimate:
        return Estimate(min(self.min, other.min), max(self.max, other.max))

    def times(self, factor: float) -> Estimate:
        return Estimate(_scale(self.min, factor), _scale(self.max, factor))

    def multiply(self, other: Estimate) -> Estimate:
        return Estimate(_mul(self.min, other.min), _mul(self.max, other.max))


UNKNOWN_SIZE = Estimate(0, MAX_UINT64)


def _add(a: int, b: int) -> int:
    return min(MAX_UINT64, a + b)


def _mul(a: int, b: int) -> int:
    return min(MAX_UINT64, a * b)


def _scale(x: int, factor: float) -> int:
    return min(MAX_UINT64, math.ceil(x * factor))


def _fixed(value: int) -> Estimate:
    return Estimate(value, value)


class _Coster:
    """cel-go ``checker.coster`` for the AST above, with macros costed as their expansions."""

    def __init__(self, types: dict[int, DeclType]) -> None:
        self.types = types
        self.sizes: dict[int, Estimate] = {}

    def size(self, node: Node) -> Estimate:
        if id(node) in self.sizes:
            return self.sizes[id(node)]
        if node.kind == "lit":
            if node.lit_type in ("string", "bytes"):
                return _fixed(len(node.value))
            return _fixed(1)
        if node.kind in ("list", "map"):
            return _fixed(len(node.args) // (2 if node.kind == "map" else 1))
        declared = self.types.get(id(node))
        if declared is not None:
            if declared.max_elements is not None and declared.kind not in SCALARS:
                return Estimate(0, declared.max_elements)
            if declared.kind in SCALARS:
                return _fixed(1)
        return UNKNOWN_SIZE

    def cost(self, node: Node) -> Estimate:
        if node.kind == "lit":
            return _fixed(0)
        if node.kind == "ident":
            return _fixed(1)
        if node.kind == "select":
            assert node.target is not None
            if node.test_only:
                return _fixed(1) + self.cost(node.target)
            operand_type = self.types.get(id(node.target), DYN)
            select = 1 if operand_type.kind in ("map", "object", "dyn") else 0
            return self.cost(node.target) + _fixed(select)
        if node.kind == "list":
            total = _fixed(LIST_CREATE_BASE_COST)
            for item in node.args:
                total = total + self.cost(item)
            return total
        if node.kind == "map":
            total = _fixed(MAP_CREATE_BASE_COST)
            for item in node.args:
                total = total + self.cost(item)
            return total
        if node.kind == "comp":
            return self._comprehension(node)
        return self._call(node)

    def _comprehension(self, node: Node) -> Estimate:
        assert node.target is not None
        range_cost = self.cost(node.target)
        range_count = self.size(node.target)
        body = [self.cost(a) for a in node.args]
        ident = _fixed(1)
        if node.macro == "all":  # accu && p, loop while @not_strictly_false(accu)
            init, step, cond, result = _fixed(0), Estimate(1, 1 + body[0].max), _fixed(2), ident
        elif node.macro == "exists":  # accu || p, loop while @not_strictly_false(!accu)
            init, step, cond, result = _fixed(0), Estimate(1, 1 + body[0].max), _fixed(3), ident
        elif node.macro == "exists_one":  # p ? accu + 1 : accu; result accu == 1
            init, cond, result = _fixed(0), _fixed(0), _fixed(2)
            step = body[0] + Estimate(1, 2)
        elif node.macro == "filter":  # p ? accu + [x] : accu
            init, cond, result = _fixed(LIST_CREATE_BASE_COST), _fixed(0), ident
            step = body[0] + Estimate(1, 2 + LIST_CREATE_BASE_COST + 1)
        else:  # map: accu + [f], or p ? accu + [f] : accu
            init, cond, result = _fixed(LIST_CREATE_BASE_COST), _fixed(0), ident
            append = _fixed(2 + LIST_CREATE_BASE_COST) + body[-1]
            step = append if len(body) == 1 else body[0] + Estimate(1, append.max)
            self.sizes[id(node)] = range_count
        loop = range_count.multiply(step + cond)
        return range_cost + init + result + loop

    def _call(self, node: Node) -> Estimate:
        name = node.value
        arg_costs = [self.cost(a) for a in node.args]
        args_total = _fixed(0)
        for c in arg_costs:
            args_total = args_total + c
        target_cost = self.cost(node.target) if node.target is not None else _fixed(0)
        if name == "dyn":
            return _fixed(1) + args_total
        if name in ("_&&_", "_||_"):
            lhs, rhs = arg_costs
            return Estimate(lhs.min, (lhs + rhs).max)
        if name == "_?_:_":
            self.sizes[id(node)] = self.size(node.args[1]).union(self.size(node.args[2]))
            return arg_costs[0] + arg_costs[1].union(arg_costs[2])
        kinds = [self.types.get(id(a), DYN).kind for a in node.args]
        target_kind = self.types.get(id(node.target), DYN).kind if node.target is not None else ""
        if name in ("startsWith", "endsWith") and node.target is not None:
            fn = self.size(node.args[0]).times(STRING_TRAVERSAL_COST_FACTOR)
        elif name == "matches" and node.target is not None:
            text = (self.size(node.target) + _fixed(1)).times(STRING_TRAVERSAL_COST_FACTOR)
            fn = text.multiply(self.size(node.args[0]).times(REGEX_STRING_LENGTH_COST_FACTOR))
        elif name == "contains" and node.target is not None and target_kind == "string":
            text = self.size(node.target).times(STRING_TRAVERSAL_COST_FACTOR)
            fn = text.multiply(self.size(node.args[0]).times(STRING_TRAVERSAL_COST_FACTOR))
        elif name == "@in" and kinds[1] == "list":
            fn = self.size(node.args[1])
        elif name == "_+_" and kinds[0] in ("string", "bytes", "list"):
            total = self.size(node.args[0]) + self.size(node.args[1])
            self.sizes[id(node)] = total
            fn = _fixed(1) if kinds[0] == "list" else total.times(STRING_TRAVERSAL_COST_FACTOR)
        elif name in ("_==_", "_!=_") or (
            name in ("_<_", "_<=_", "_>_", "_>=_") and kinds[0] in ("string", "bytes")
        ):
            smallest = min(self.size(node.args[0]).max, self.size(node.args[1]).max)
            fn = Estimate(1 if smallest > 0 else 0, smallest).times(STRING_TRAVERSAL_COST_FACTOR)
        else:
            fn = _fixed(1)
        return target_cost + fn + args_total


# ----------------------------------------------------------------------------------------- compile


@dataclass(frozen=True)
class CompiledRule:
    rule: str
    max_cost: int  # cel-go's estimated maximum cost of one evaluation
    uses_old_self: bool


def compile_rule(rule: str, self_type: DeclType) -> CompiledRule:
    """Compile ``rule`` as kube-apiserver does for a schema node of type ``self_type``.

    Raises CelCompileError with a cel-go style message when the rule would be rejected.
    """
    try:
        cel_rust.compile(rule)  # the second implementation's parser must accept it too
    except ValueError as exc:
        detail = str(exc).split(": ", 1)[-1] if "ERROR:" in str(exc) else str(exc)
        raise CelCompileError(detail.strip()) from None
    ast = parse(rule)
    checker = _Checker(rule, {"self": self_type, "oldSelf": self_type})
    result = checker.check(ast)
    if result.kind not in ("bool", "dyn"):
        raise CelCompileError("cel expression must evaluate to a bool")
    cost = _Coster(checker.types).cost(ast)
    uses_old_self = any(_idents(ast, "oldSelf"))
    return CompiledRule(rule, cost.max, uses_old_self)


def _idents(node: Node, name: str) -> list[Node]:
    found = [node] if node.kind == "ident" and node.value == name else []
    for child in [node.target, *node.args]:
        if child is not None:
            found += _idents(child, name)
    return found


def max_cardinality(min_size: int) -> int:
    """How often data of ``min_size`` serialized bytes can repeat in one request (unbounded parents)."""
    return MAX_REQUEST_SIZE_BYTES // (min_size + 1)
