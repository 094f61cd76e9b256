"""``--where``: a small, safe filter language over result records (no ``eval``).

    error==null                          no error
    kind==timeout or kind==oom           the error's kind (``kind`` is derived from ``error``)
    captions.blip~cat                    contains, case-insensitive (``!~``: does not)
    ocr.text!=""  and not error          ``and``, ``or``, ``not``, parentheses
    clip-i:output:0>=0.8                 a name not in the record is looked up in ``scores``
    scores."clip-i:output:0" >= 0.8      the same, written out; quote names with odd characters
    meta.split=="train"                  any nested key (``meta`` from dataset inputs)
    outputs.0                            a bare path: true when present and not empty
    attempts>1                           numbers compare as numbers

Comparisons: ``== != < <= > >= ~ !~``. Values: numbers, ``"strings"`` or ``'strings'``,
``null``, ``true``, ``false``, or a bare word (a string). A missing field is ``null``; an
ordering comparison with ``null`` or a non-number is false. List elements are addressed by
index (``outputs.0``).
"""
from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

__all__ = ["WhereError", "compile_where", "matches"]


class WhereError(ValueError):
    """A filter that does not parse; says where."""


_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<op>==|!=|<=|>=|!~|=~|~|<|>)
  | (?P<lp>\()  | (?P<rp>\))  | (?P<dot>\.)
  | (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<num>[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?(?![\w:-]))
  | (?P<name>[A-Za-z0-9_][A-Za-z0-9_:\-/@+]*)
""", re.VERBOSE)
_WORDS = {"and", "or", "not"}
_CONST = {"null": None, "none": None, "true": True, "false": False}


def _tokens(text: str) -> list[tuple[str, Any, int]]:
    out, i = [], 0
    while i < len(text):
        m = _TOKEN.match(text, i)
        if not m:
            raise WhereError(f"--where {text!r}: unexpected {text[i]!r} at column {i + 1}")
        kind = m.lastgroup
        val = m.group(kind)
        if kind == "str":
            val = re.sub(r"\\(.)", r"\1", val[1:-1])
        elif kind == "num":
            val = float(val) if re.search(r"[.eE]", val) else int(val)
        elif kind == "name" and val.lower() in _WORDS:
            kind, val = val.lower(), val.lower()
        if kind != "ws":
            out.append((kind, val, i))
        i = m.end()
    out.append(("end", None, len(text)))
    return out


class _Parser:
    def __init__(self, text: str):
        self.text, self.toks, self.i = text, _tokens(text), 0

    def peek(self):
        return self.toks[self.i]

    def take(self, *kinds):
        t = self.toks[self.i]
        if kinds and t[0] not in kinds:
            what = "the end" if t[0] == "end" else repr(t[1])
            raise WhereError(f"--where {self.text!r}: expected {' or '.join(kinds)} at column "
                             f"{t[2] + 1}, found {what}")
        self.i += 1
        return t

    def parse(self) -> Callable[[dict], bool]:
        f = self.or_()
        self.take("end")
        return f

    def _joined(self, op: str, operand, combine):
        """``operand (op operand)*``, combined with ``any`` (or) or ``all`` (and)."""
        fs = [operand()]
        while self.peek()[0] == op:
            self.take()
            fs.append(operand())
        return fs[0] if len(fs) == 1 else (lambda r: combine(f(r) for f in fs))

    def or_(self):
        return self._joined("or", self.and_, any)

    def and_(self):
        return self._joined("and", self.not_, all)

    def not_(self):
        if self.peek()[0] == "not":
            self.take()
            f = self.not_()
            return lambda r: not f(r)
        return self.atom()

    def atom(self):
        if self.peek()[0] == "lp":
            self.take()
            f = self.or_()
            self.take("rp")
            return f
        path = self.path()
        if self.peek()[0] != "op":
            return lambda r: _truthy(resolve(r, path))
        op = self.take()[1]
        kind, val, _ = self.take("num", "str", "name")
        if kind == "name":
            val = _CONST.get(val.lower(), val)
        return _compare(path, op, val)

    def path(self) -> list[str | int]:
        parts = [self._segment()]
        while self.peek()[0] == "dot":
            self.take()
            parts.append(self._segment())
        return parts

    def _segment(self):
        kind, val, _ = self.take("name", "str", "num")
        if kind == "num":
            if not isinstance(val, int) or val < 0:
                raise WhereError(f"--where {self.text!r}: {val!r} is not a list index")
            return val
        if kind == "name" and val.isdigit():
            return int(val)
        return val


def _truthy(v) -> bool:
    return v not in (None, "", [], {}, False)


def _num(v):
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return v
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return None
    return None


def _compare(path, op, want) -> Callable[[dict], bool]:
    def f(r: dict) -> bool:
        got = resolve(r, path)
        if op in ("==", "!="):
            if isinstance(want, (int, float)) and not isinstance(want, bool):
                n = _num(got)
                eq = n is not None and n == want
            elif want is None or isinstance(want, bool):
                eq = got is want or got == want and type(got) is type(want)
            else:
                eq = got is not None and str(got) == want
            return eq if op == "==" else not eq
        if op in ("~", "=~", "!~"):
            hit = got is not None and str(want).lower() in _text(got).lower()
            return hit if op != "!~" else not hit
        a, b = _num(got), _num(want)
        if a is None or b is None:
            return False
        return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]
    return f


def _text(v) -> str:
    if isinstance(v, dict):
        return " ".join(_text(x) for x in v.values())
    if isinstance(v, list):
        return " ".join(_text(x) for x in v)
    return str(v)


def resolve(rec: dict, path: list[str | int]):
    """The value at ``path`` in ``rec`` (None when missing). The first name falls back to
    ``scores`` (then ``meta``) when the record has no such field; ``kind`` is the error's."""
    head = path[0]
    if isinstance(head, str) and head not in rec:
        if head == "kind":
            err = rec.get("error")
            cur = err.split(":", 1)[0] if isinstance(err, str) else None
            return _walk(cur, path[1:])
        for holder in ("scores", "meta"):
            d = rec.get(holder)
            if isinstance(d, dict) and head in d:
                return _walk(d, path)
        return None
    return _walk(rec, path)


def _walk(cur, path):
    for p in path:
        if isinstance(cur, dict):
            cur = cur.get(p if isinstance(p, str) else str(p))
            if cur is None and isinstance(p, int):
                return None
        elif isinstance(cur, list) and isinstance(p, int):
            cur = cur[p] if p < len(cur) else None
        else:
            return None
    return cur


def compile_where(text: str | None) -> Callable[[dict], bool]:
    """A predicate over record dicts; ``None`` or blank matches everything."""
    if text is None or not text.strip():
        return lambda r: True
    return _Parser(text).parse()


def matches(text: str | None, rec: dict) -> bool:
    return compile_where(text)(rec)
