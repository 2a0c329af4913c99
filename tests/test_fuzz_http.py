"""Fuzzing the HTTP surface (issue 5, "Bad input"): 50 000 requests drawn by hypothesis or
replayed from its draw, each checked against a precise oracle, while the server's memory
must stay flat.

Design, and why:

* **The server runs in its own process** (``tests/fuzz_app.py``), so the RSS measured with
  ``psutil`` is the server's alone. Its routes are backed by the session's real workers
  (``echo``, ``fail``) through the real RabbitMQ: waiting routes, a fire-and-forget route,
  routes with small body limits (64 B, 4 KiB), a fixed kwarg, several tasks, a route whose
  task raises on purpose.
* **The client speaks raw HTTP/1.1 bytes** over 16 keep-alive connections in parallel
  (``http.client`` refuses odd methods and header values). Tornado closes a connection when
  it answered before reading the whole request (a 405, a 413 from ``Content-Length``...):
  the client then reopens it, and sends the next request again only if no byte of an
  answer had come and the last answer was such a status; any other lost answer fails the
  test. Bodies over 32 KiB go with ``Expect: 100-continue`` (as curl sends them), so that a
  body refused unread is never written into a socket being closed (its reset would lose
  the answer).
* **Two phases.** Hypothesis draws 400 batches of 25 requests (``@given(st.lists(...,
  min_size=25, max_size=25))``: a batch amortizes hypothesis's per-example cost and keeps
  the connections busy; a failing batch shrinks to the simplest failing requests). Drawing
  costs about 4 ms of CPU per request on this 2-core machine, against about 1.5 ms for the
  server, broker and worker to answer one: all 50 000 drawn would take over 5 minutes.
  So these 10 000 drawn requests (plus two explicit batches that pin one request of each
  kind of answer) are then replayed, each replay checked by the oracle again, until 50 000
  requests have been answered. The first 10 000 are the memory warm-up; the replays keep
  the very same mix, so a flat RSS over them means no request of any kind leaks.
* **The oracle** (:func:`expect`) decides, from the request and the route table alone, the
  one status and body the README promises: unknown path → 404 (or a 400 for a broken
  multipart body: tornado parses it before the 404 handler runs); unknown verb → 405 whose
  ``Allow`` and ``error.allowed`` list the route's verbs (none on an unknown path); a verb
  without tasks → 405; a body over the limit → 413 with ``error.limit`` (from
  ``Content-Length`` before reading, or while streaming a chunked body); bad UTF-8 in the
  path, query, form or JSON body, malformed, non-object or too deep JSON, a malformed form,
  a file upload, the same argument from two sources, a kwarg fixed by the route → 400
  naming the problem (``error.argument``/``source``/``sources``/``fields`` exactly); another
  media type → 415; arguments ``fail(message)`` cannot take, on ``/fail`` and on
  ``/multi-fail`` (whose other task, ``echo``, would take them) → 400 naming the first
  unexpected kwarg, else the missing ``message`` (the signature check, before anything is
  sent); else 200 with exactly what ``echo`` must return, 202 with one id per task, and 500
  only from the fail routes, whose task raises on purpose (``state`` FAILURE, a ``task_id``,
  the exception's type and message), or from ``/fail-remote``, whose app skips the check
  (Celery's ``strict_typing=False``): there the worker's TypeError is the 500. HEAD is the
  GET's answer without a body (405 where the route has no GET); OPTIONS is a 204 with
  ``Allow`` (the route's verbs, HEAD where GET, OPTIONS), no body and no type, or a 413 from
  ``Content-Length`` (a chunked body is never read). Query strings and form bodies are
  decoded with ``urllib.parse`` as the reference, JSON with ``json``. Every other answer
  must be strict JSON (no NaN) with an ``application/json`` type; no route has ``cors=``, so
  no answer carries an ``Access-Control-*`` header (an ``Origin`` is among the drawn
  headers); no other status (no 502/503/504) is accepted.
* **Memory**: the server's RSS after the warm-up and at the end may differ by at most
  :data:`RSS_GROWTH_BOUND`; the reasoning is next to the constant. The server log must not
  hold a traceback, and the worker must still be alive.

The fuzzer found eight bugs, all fixed, and their inputs are drawn: argument names ``verb``
/ ``index`` → 500 (they collided with ``TaskHandler``'s parameters); non-ASCII query and form
names passed on as latin-1 mojibake; form types in other letter cases dropped silently;
NaN / Infinity accepted and echoed as invalid JSON; a float overflow (``1e400``) echoed as
``Infinity``; integers of over 4300 digits → 500; JSON nested a few hundred levels killing
the prefork worker (the message is redelivered to the next one: a poison message); an
argument named ``self``, which Celery's worker cannot pass to a task (a 500 from a task that
never ran; now a 400). Adapting it to the signature check found two more: a task named by a
signature or by name went unchecked until the app happened to be finalized (``app._tasks``
lacks ``@app.task`` functions not yet touched), and an argument name with a quote or an
empty one was named wrongly or not at all in ``error.argument``.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import select
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, quote_from_bytes, quote_plus, unquote_to_bytes

import psutil
import pytest
import tornado
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from tcelery_req_handler.web.arguments import MAX_JSON_DEPTH
from tests import worker_app
from tests.conftest import blocking_connection
from tests.fuzz_app import ROUTES, Route
from tests.workers import ROOT, CeleryWorker

REQUESTS = 50_000  # sent in all, the drawn ones then replays of them
DRAWN_BATCHES = 400  # hypothesis examples of BATCH requests: 10 000 distinct requests
BATCH = 25
REPLAY_BATCH = 200
WARM_UP = 10_000
CONNECTIONS = 16
REQUEST_TIMEOUT = 60.0  # > the routes' 30 s result timeout: a hang shows as a 504 first
MiB = 1024 * 1024
# The server's RSS may grow by at most this much between the warm-up sample (10 000
# requests) and the end (50 000). Leaking one small object per request (a request, a
# result, a future: 200 bytes or more) would add 8 MiB over those 40 000 requests; what may
# legitimately move is bounded and settled by the warm-up (tornado's header-name cache, the
# allocator's arenas after 1 MiB bodies). Measured: between -0.7 and +1.8 MiB.
RSS_GROWTH_BOUND = 8 * MiB

KNOWN_METHODS = ("GET", "HEAD", "POST", "DELETE", "PATCH", "PUT", "OPTIONS")  # tornado's
MAY_CLOSE = frozenset({400, 404, 405, 413})  # answers tornado may give before the body
#: Tornado parses the body of a request to an unknown path itself, before the 404 handler:
#: 6.5 answers a broken multipart body 400; before 6.5 it only logged it, and the 404 stands.
TORNADO_REFUSES_BROKEN_FORMS = tornado.version_info >= (6, 5)
INVALID_BODY = "400-invalid-body" if TORNADO_REFUSES_BROKEN_FORMS else "404-invalid-body"
KINDS = frozenset({  # the oracle's categories of answers
    "200", "202", "404", "405-unknown-verb", "405-unmapped", "413-length", "413-chunked",
    "400-path-utf8", "400-query-utf8", "400-form-utf8", "400-json-utf8", "400-json-deep",
    "400-json-constant", "400-json-overflow", "400-json-number", "400-self",
    "400-json-malformed", "400-json-not-object", "400-form-malformed", "400-file-upload",
    "400-conflict", "400-fixed", "415", "500-ValueError", "500-TypeError", INVALID_BODY,
    "400-signature", "204-options", "200-head", "405-head"})


# --------------------------------------------------------------------------- the requests


@dataclass(frozen=True)
class Multipart:
    """What a multipart body holds: (name, value, filename or None) parts and its defect."""

    parts: tuple[tuple[str, bytes, str | None], ...]
    defect: str | None = None


@dataclass(frozen=True)
class Req:
    method: str
    target: str  # the request-target: path and query, ASCII
    body: bytes = b""
    content_type: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    chunk: int = 0  # > 0: Transfer-Encoding: chunked, in chunks of this size
    expect: bool = False  # Expect: 100-continue
    close: bool = False  # Connection: close
    multipart: Multipart | None = None
    depth: int = 0  # of a nested JSON body: how many containers deep (else 0: any shallow)

    def __repr__(self) -> str:
        body = self.body if len(self.body) <= 200 else (
            self.body[:200] + f"...<{len(self.body)} bytes>".encode())
        target = self.target if len(self.target) <= 200 else (
            f"{self.target[:200]}...<{len(self.target)} chars>")
        return (f"Req({self.method!r}, {target!r}, body={body!r}, "
                f"content_type={self.content_type!r}, headers={self.headers!r}, "
                f"chunk={self.chunk}, expect={self.expect}, close={self.close}, "
                f"multipart={self.multipart!r}, depth={self.depth})")

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # how hypothesis prints it
        printer.text(repr(self))

    def head(self, host: str) -> bytes:
        lines = [f"{self.method} {self.target} HTTP/1.1", f"Host: {host}"]
        if self.content_type is not None:
            lines.append(f"Content-Type: {self.content_type}")
        lines += [f"{name}: {value}" for name, value in self.headers]
        lines.append("Transfer-Encoding: chunked" if self.chunk
                     else f"Content-Length: {len(self.body)}")
        if self.expect:
            lines.append("Expect: 100-continue")
        if self.close:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def framed_body(self) -> bytes:
        if not self.chunk:
            return self.body
        out = [b"%x\r\n%s\r\n" % (len(piece), piece) for piece in
               (self.body[i:i + self.chunk] for i in range(0, len(self.body), self.chunk))]
        return b"".join(out) + b"0\r\n\r\n"


# ----------------------------------------------------------------------------- strategies

TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
ASCII_NAME = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-. ~+*%&=/"
PATH_JUNK = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in "/?")
UNDELIVERABLE = "self"  # Celery cannot pass a kwarg named so to a task: a 400
NAME_POOL = ("a", "b", "x", "name", "message", "fixed", "first", "args", "kwargs", "task_id",
             "A", "", "a b", "é", "verb", "index", "args[]", "a.b", UNDELIVERABLE)
DENIED_HEADERS = frozenset({
    "host", "content-length", "transfer-encoding", "content-type", "connection", "expect",
    "content-encoding", "te", "trailer", "upgrade", "keep-alive", "proxy-connection"})
FIXED_HEADERS = (
    ("Accept", "text/html"), ("Accept", "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8"),
    ("Accept", "*/*"), ("Accept-Encoding", "gzip, deflate"), ("Cookie", "a=b; c; =d"),
    ("Origin", "http://evil.example"), ("If-None-Match", "*"), ("Range", "bytes=0-1"),
    ("X-Forwarded-For", "1.2.3.4"), ("X-HTTP-Method-Override", "DELETE"),
    ("Authorization", "Basic Zm9vOmJhcg=="), ("User-Agent", "fuzz/1.0 (\xe9)"),
    ("Cache-Control", "no-cache"), ("Accept-Charset", "latin-1"))
JSON_TYPES = ("application/json", "application/json; charset=utf-8",
              "application/json;charset=UTF-8", "APPLICATION/JSON",
              "Application/Json ; charset=latin-1", "application/vnd.api+json",
              "application/problem+json")
FORM_TYPES = ("application/x-www-form-urlencoded",
              "application/x-www-form-urlencoded; charset=utf-8",
              "application/x-www-form-urlencoded;charset=latin-1",
              "Application/X-WWW-Form-Urlencoded", "APPLICATION/x-www-form-urlencoded ;q=1")
OTHER_TYPES = ("text/plain", "text/plain; charset=utf-8", "text/html", "application/xml",
               "application/octet-stream", "application/jsonx", "json", "", ";", "*/*",
               "application/x-www-form-urlencodedx", "multipart/mixed; boundary=x",
               "application/json-seq", "image/png")


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of ``choices``, each drawn ``weight`` times as often as a weight of 1 would be.
    (``st.one_of`` counts a strategy given twice only once.)"""
    expanded = [strategy for weight, strategy in choices for _ in range(weight)]

    @st.composite
    def pick(draw: st.DrawFn) -> Any:
        return draw(draw(st.sampled_from(expanded)))

    return pick()


def chance(one_in: int) -> st.SearchStrategy[bool]:
    """True once in ``one_in`` draws. (``st.integers(0, n) == 0`` is no such thing: inside
    a composite, hypothesis draws the bounds of a range far more often than the rest.)"""
    return st.sampled_from([False] * (one_in // 2) + [True] + [False] * (one_in - 1 - one_in // 2))


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def is_json_type(content_type: str | None) -> bool:
    media = media_type(content_type)
    return media == "application/json" or media.endswith("+json")


garbage_type = st.text(TCHAR + "/;= ", min_size=1, max_size=30).map(str.strip).filter(
    lambda t: bool(t) and not t.lower().startswith(("application/x-www-form-urlencoded",
                                                    "multipart/form-data")))
other_type = st.one_of(st.sampled_from(OTHER_TYPES), garbage_type)
json_type = st.sampled_from(JSON_TYPES)

text = st.text(max_size=16)
segment = weighted(
    (6, st.text(min_size=1, max_size=12).map(lambda s: quote(s, safe=""))),
    (1, st.binary(min_size=1, max_size=8).map(lambda b: quote_from_bytes(b, safe=""))),
    (2, st.text(PATH_JUNK, min_size=1, max_size=12)),
    (1, st.sampled_from(["a", "1", "%2F", "%00", "..", ".", "%", "%zz", "+", "~", "%C3%A9"])),
)
long_segment = st.tuples(segment, st.integers(1_000, 20_000)).map(
    lambda t: (t[0] * (t[1] // len(t[0]) + 1))[:t[1]])
unknown_paths = weighted(  # (mostly: a random one may match a route)
    (2, st.sampled_from(["/", "/echo/", "/ECHO", "/echo/a/b", "//echo", "/pos/a", "/small/",
                         "/pos/a/b/c", "/fire/1", "/echo%2Fx", "/echo#x", "/fail/"])),
    (3, st.lists(segment, max_size=5).map(lambda segs: "/" + "/".join(segs))),
    (1, long_segment.map(lambda s: f"/{s}")),
)
paths = weighted(
    (12, st.sampled_from(["/echo", "/small", "/multi", "/fixed", "/fail", "/fire",
                          "/delete-only", "/fail-remote", "/multi-fail"])),
    (6, segment.map(lambda s: f"/echo/{s}")),
    (3, st.tuples(segment, segment).map(lambda t: f"/pos/{t[0]}/{t[1]}")),
    (1, long_segment.map(lambda s: f"/echo/{s}")),
    (6, unknown_paths),
)
methods = weighted(
    (10, st.sampled_from(["GET", "POST"])),
    (6, st.sampled_from(["PUT", "DELETE"])),
    (4, st.sampled_from(["PATCH", "HEAD", "OPTIONS"])),
    (2, st.text(TCHAR, min_size=1, max_size=10)),
    (1, st.sampled_from(["get", "post", "BREW", "PROPFIND", "CONNECT", "TRACE"])),
)
url_name = weighted(  # bytes: percent-encoded, they need not be UTF-8
    (6, st.sampled_from(NAME_POOL).map(str.encode)),
    (3, st.text(ASCII_NAME, max_size=8).map(str.encode)),
    (1, st.text(min_size=1, max_size=6).map(str.encode)),
    (1, st.binary(min_size=1, max_size=4)),
)
utf8_name = st.one_of(st.sampled_from(NAME_POOL), text)
url_value = weighted(
    (6, text.map(lambda s: s.encode())),
    (1, st.binary(max_size=12)),  # often not UTF-8
    (1, st.text(max_size=4).map(lambda s: s.encode() * 50)),
)


@st.composite
def url_pairs(draw: st.DrawFn) -> str:
    """An urlencoded string (query or form body): names repeat, junk fields mix in."""
    fields: list[str] = []
    names: list[bytes] = []
    for _ in range(draw(st.integers(0, 6))):
        repeat = bool(names) and draw(st.booleans())
        name: bytes = draw(st.sampled_from(names)) if repeat else draw(url_name)
        names.append(name)
        value = draw(url_value)
        if draw(st.booleans()):
            encoded = quote_from_bytes(name, safe="") + "=" + quote_from_bytes(value, safe="")
        else:
            encoded = quote_plus(name) + "=" + quote_plus(value)
        if not value and draw(chance(4)):
            encoded = encoded[:-1]  # "name" without "=": a blank value
        fields.append(encoded)
    if draw(chance(5)):
        junk = ["", "=", "==", "%zz=%", "a=%", "=x", "&", "a=b=c", "%6e%61me=1", "+=+"]
        fields.insert(draw(st.integers(0, len(fields))), draw(st.sampled_from(junk)))
    return "&".join(fields)


queries = weighted((6, st.none()), (1, st.just("")), (10, url_pairs()))

scalars = st.one_of(st.none(), st.booleans(), st.integers(),
                    st.floats(allow_nan=False, allow_infinity=False), text)
json_values = weighted(  # one level of nesting; deeper JSON comes from nested_json
    (3, scalars), (1, st.lists(scalars, max_size=3)),
    (1, st.dictionaries(utf8_name, scalars, max_size=3)))
json_objects = st.dictionaries(utf8_name, json_values, max_size=5)


def json_text(values: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    """``values`` serialized, in one of several layouts."""
    return st.builds(lambda value, ascii, indent: json.dumps(
        value, ensure_ascii=ascii, indent=indent).encode(),
        values, st.booleans(), st.sampled_from([None, None, 0, 2]))


def _typed(body: st.SearchStrategy[bytes], types: st.SearchStrategy[str | None] = json_type
           ) -> st.SearchStrategy[tuple[bytes, str | None, Multipart | None, int]]:
    return st.tuples(body, types, st.none(), st.just(0))


@st.composite
def duplicate_keys(draw: st.DrawFn) -> bytes:
    pairs = draw(st.lists(st.tuples(st.sampled_from(["a", "b", "message"]), json_values),
                          min_size=2, max_size=5))
    return ("{" + ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in pairs)
            + "}").encode()


@st.composite
def malformed_json(draw: st.DrawFn) -> bytes:
    valid = draw(json_text(json_objects))
    how = draw(st.sampled_from(range(5)))
    if how == 0:
        return valid[:-1]  # an object missing its closing brace
    if how == 1:
        return valid + b"x"
    if how == 2:
        return b"{'a': 1}"
    if how == 3:
        return b"\xef\xbb\xbf" + valid  # a UTF-8 byte order mark
    return draw(st.text(min_size=1, max_size=20)).encode()  # the oracle's json decides


@st.composite
def invalid_utf8_json(draw: st.DrawFn) -> bytes:
    valid = draw(json_text(json_objects))
    at = draw(st.integers(0, len(valid)))
    return valid[:at] + draw(st.sampled_from([b"\xff", b"\xc0\xaf", b"\xed\xa0\x80",
                                              b"\xe2\x82"])) + valid[at:]


@st.composite
def nested_json(draw: st.DrawFn) -> tuple[bytes, str | None, Multipart | None, int]:
    """An object holding containers nested ``levels`` deep: around the limit, around where
    codecs' recursion gives out (a few hundred to a thousand), or far beyond."""
    levels = draw(weighted((3, st.integers(1, MAX_JSON_DEPTH + 2)),
                           (1, st.integers(MAX_JSON_DEPTH - 2, MAX_JSON_DEPTH + 2)),
                           (1, st.integers(400, 1_200)), (1, st.integers(5_000, 50_000))))
    if draw(st.booleans()):
        inner = b"[" * levels + b"]" * levels
    else:
        inner = b'{"a": ' * levels + b"1" + b"}" * levels
    return b'{"nested": ' + inner + b"}", draw(json_type), None, levels + 1


@st.composite
def unreadable_json(draw: st.DrawFn) -> bytes:
    """JSON that Python's parser reads but JSON does not allow, or Python cannot convert."""
    # Three branches of one_of, so each kind of refusal is drawn about as often.
    value = draw(st.one_of(
        st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"[1, NaN]"]),
        st.sampled_from([b"1e400", b"-2.5E+999", b"[0.5, 1e309]"]),
        st.integers(4_301, 6_000).map(lambda digits: b"1" * digits)))
    return value if draw(chance(5)) else b'{"a": ' + value + b"}"


@st.composite
def padded_json(draw: st.DrawFn) -> bytes:
    """A JSON object of a size around a route's limit (64, 4096) or between them."""
    size = draw(st.one_of(st.integers(60, 70), st.integers(4090, 4100),
                          st.integers(71, 8000)))
    return b'{"pad": "' + b"x" * max(0, size - 11) + b'"}'


@st.composite
def multipart(draw: st.DrawFn) -> tuple[bytes, str | None, Multipart | None, int]:
    boundary = draw(st.text("abcdefghijklmnopqrstuvwxyz0123456789'()+_,-.", min_size=20,
                            max_size=40))
    parts = tuple(draw(st.lists(st.tuples(
        st.one_of(st.sampled_from(["a", "b", "name", "message", "é", "x y"]),
                  st.text("abcdefghijklmnopqrstuvwxyz0123456789_", min_size=1, max_size=8)
                  ),
        weighted((3, text.map(lambda s: s.encode())), (1, st.binary(max_size=12))),
        weighted((6, st.none()), (1, st.sampled_from(["", "f.txt"])))), max_size=5)))
    assert all(boundary.encode() not in value for _, value, _ in parts)  # (too short)
    # Defects as often as sound bodies: a broken body on an unknown path (tornado's own 400)
    # needs both, and is the rarest answer the draw must reach.
    defect = draw(weighted((1, st.none()), (1, st.sampled_from([
        "no_final", "no_headers", "no_name", "attachment", "no_boundary", "wrong_boundary"]))))
    delimiter = b"--" + boundary.encode()
    body = b""
    for index, (name, value, filename) in enumerate(parts):
        disposition = "attachment" if defect == "attachment" and index == 0 else "form-data"
        header = f"Content-Disposition: {disposition}"
        if not (defect == "no_name" and index == 0):
            header += f'; name="{name}"'
        if filename is not None:
            header += f'; filename="{filename}"\r\nContent-Type: text/plain'
        if defect == "no_headers" and index == 0:
            body += delimiter + b"\r\n" + b"no blank line after these headers\r\n"
        else:
            body += delimiter + b"\r\n" + header.encode() + b"\r\n\r\n" + value + b"\r\n"
    if defect != "no_final":
        body += delimiter + b"--\r\n"
    if defect in ("no_headers", "no_name", "attachment") and not parts:
        defect = None  # nothing to break
    content_type = {"no_boundary": "multipart/form-data",
                    "wrong_boundary": "multipart/form-data; boundary=other" + boundary
                    }.get(defect or "", f"multipart/form-data; boundary={boundary}")
    content_type = content_type.replace("multipart/form-data", draw(st.sampled_from(
        ["multipart/form-data"] * 3 + ["Multipart/Form-Data", "MULTIPART/FORM-DATA"])))
    return body, content_type, Multipart(parts, defect), 0


bodies = weighted(
    (20, st.tuples(st.just(b""), st.one_of(st.none(), json_type, other_type,
                                           st.sampled_from(FORM_TYPES)),
                   st.none(), st.just(0))),
    (20, _typed(json_text(json_objects))),
    (3, _typed(duplicate_keys())),
    (5, _typed(json_text(json_values.filter(lambda v: not isinstance(v, dict))))),
    (5, _typed(malformed_json())),
    (3, _typed(invalid_utf8_json())),
    (5, nested_json()),
    (5, _typed(unreadable_json())),
    (5, _typed(padded_json())),
    (10, _typed(url_pairs().map(lambda s: s.encode("latin-1")), st.sampled_from(FORM_TYPES))),
    (10, multipart()),
    (7, _typed(st.one_of(st.binary(min_size=1, max_size=64), text.map(str.encode)),
               st.one_of(st.none(), other_type, json_type))),
)
huge_bodies = st.tuples(st.integers(MiB + 1, MiB + 64 * 1024), st.booleans()).map(
    lambda t: b'{"pad": "' + b"x" * (t[0] - 11) + b'"}' if t[1] else b"x" * t[0])
extra_headers = weighted((3, st.just([])), (1, st.lists(st.one_of(
    st.sampled_from(FIXED_HEADERS),
    st.tuples(st.text(TCHAR, min_size=1, max_size=20).filter(
        lambda n: n.lower() not in DENIED_HEADERS),
        st.text(st.characters(min_codepoint=0x21, max_codepoint=0xFF,
                              exclude_characters="\x7f"), max_size=30)),
), min_size=1, max_size=4)))


GROUP = re.compile(r"\((?:\?P<\w+>)?\[\^/\]\+\)")  # a route's ``([^/]+)`` groups


def fails(route: Route) -> bool:
    """Whether one of the route's tasks is ``fail`` (which takes exactly ``message``)."""
    return any(task.kind == "fail" for task in route.tasks)


@st.composite
def requests(draw: st.DrawFn) -> Req:
    """Mostly requests a route can serve (valid verb, path and arguments), the rest not."""
    shape = draw(st.sampled_from(["route"] * 12 + ["unmapped"] * 3 + ["anywhere"] * 4
                                 + ["nowhere"] * 2))
    route = draw(st.sampled_from(ROUTES))
    query = draw(queries)
    if shape == "anywhere":
        method, target = draw(methods), draw(paths)
    elif shape == "nowhere":
        method, target = draw(st.sampled_from(KNOWN_METHODS)), draw(unknown_paths)
    else:
        target = GROUP.sub(lambda _: draw(segment), route.pattern)
        verbs = route.verbs if shape == "route" else [
            m for m in KNOWN_METHODS if m not in route.verbs]
        method = draw(st.sampled_from(verbs))
        if fails(route) and draw(st.booleans()):
            query = "message=" + quote_from_bytes(draw(url_value), safe="")
        elif bool(route.tasks[0].fixed) and draw(chance(3)):
            query = f"{query or ''}&fixed=" + quote_from_bytes(draw(url_value), safe="")
    if query is not None:
        target += "?" + query
    content_type: str | None
    if draw(chance(200)):
        body, content_type, parts, depth = draw(huge_bodies), draw(json_type), None, 0
    elif fails(route) and query and query.startswith("message="):
        body, content_type, parts, depth = b"", draw(st.none() | json_type), None, 0
    else:
        body, content_type, parts, depth = draw(bodies)
    chunk = 0
    if draw(chance(5)):
        chunk = draw(st.sampled_from([1, 2, 7, 100, 1000, 8192, max(1, len(body))]))
        if len(body) > 64 * 1024:
            chunk = max(chunk, 8192)
    return Req(method, target, body, content_type, tuple(draw(extra_headers)), chunk,
               expect=len(body) > 32 * 1024 or draw(chance(20)),
               close=draw(chance(30)), multipart=parts, depth=depth)


# --------------------------------------------------------------------------------- oracle

MISSING: Any = object()


@dataclass
class Expected:
    status: int
    kind: str  # the category, for the coverage count
    error_type: str | None = None
    message: str = ""  # a part of error.message
    detail: dict[str, Any] = field(default_factory=dict)  # error's other keys, exactly
    allowed: list[str] | None = None  # 405: the Allow header and error.allowed
    result: Any = MISSING  # 200: the exact body
    task_ids: int = 0  # 202: how many ids
    failure: str | None = None  # 500: the remote exception type


class Refused(Exception):
    """The request is refused with ``expected``."""

    def __init__(self, expected: Expected) -> None:
        super().__init__(expected.kind)
        self.expected = expected


def bad_request(kind: str, message: str, **detail: Any) -> Refused:
    return Refused(Expected(400, kind, "BadRequest", message, detail))


def route_for(path: str) -> tuple[Route, re.Match[str]] | None:
    for route in ROUTES:
        match = re.fullmatch(route.pattern, path)  # tornado: pattern + "$", from the start
        if match:
            return route, match
    return None


def last_values(pairs: Sequence[tuple[bytes, bytes]], source: str) -> dict[str, str]:
    """The last value of each name, in the order names first appear; names and values are
    UTF-8 (a 400 naming the first that is not)."""
    last: dict[bytes, bytes] = {}
    for raw_name, value in pairs:
        last[raw_name] = value
    decoded: dict[str, str] = {}
    for raw_name, value in last.items():
        try:
            name = raw_name.decode("utf-8")
        except UnicodeDecodeError:
            raise bad_request(f"400-{source}-utf8", "argument name is not valid UTF-8",
                              source=source) from None
        try:
            decoded[name] = value.decode("utf-8")
        except UnicodeDecodeError:
            raise bad_request(f"400-{source}-utf8", "not valid UTF-8", argument=name,
                              source=source) from None
    return decoded


def urlencoded(raw: str) -> list[tuple[bytes, bytes]]:
    """Reference parse of an urlencoded string (``urllib``), to bytes."""
    return [(n.encode("latin-1"), v.encode("latin-1"))
            for n, v in parse_qsl(raw, keep_blank_values=True, encoding="latin-1")]


class _Constant(Exception):
    pass


class _Overflow(Exception):
    pass


def _finite(text: str) -> float:
    if not math.isfinite(value := float(text)):
        raise _Overflow(text)
    return value


def _constant(name: str) -> Any:
    raise _Constant(name)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def json_depth(value: Any) -> int:
    """How many containers deep ``value`` is (a scalar: 0, ``{}``: 1, ``{"a": []}``: 2)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1)
                         for child in (node.values() if isinstance(node, dict) else node))
    return deepest


def body_arguments(req: Req) -> tuple[str, dict[str, Any]]:
    if not req.body:
        return "body", {}
    media = media_type(req.content_type)
    if is_json_type(req.content_type):
        if req.depth > MAX_JSON_DEPTH:  # (an object, valid otherwise)
            raise bad_request("400-json-deep", f"nested deeper than {MAX_JSON_DEPTH} levels",
                              limit=MAX_JSON_DEPTH)
        try:
            value = json.loads(req.body.decode("utf-8"), parse_constant=_constant,
                               parse_float=_finite)
        except UnicodeDecodeError:
            raise bad_request("400-json-utf8", "JSON body is not valid UTF-8") from None
        except _Constant:
            raise bad_request("400-json-constant", "which JSON does not allow") from None
        except _Overflow:
            raise bad_request("400-json-overflow", "a number out of range") from None
        except json.JSONDecodeError:
            raise bad_request("400-json-malformed", "malformed JSON body") from None
        except ValueError:  # an integer of more digits than Python converts
            raise bad_request("400-json-number", "cannot be read") from None
        if not isinstance(value, dict):
            raise bad_request("400-json-not-object", "must be an object")
        if json_depth(value) > MAX_JSON_DEPTH:
            raise bad_request("400-json-deep", f"nested deeper than {MAX_JSON_DEPTH} levels",
                              limit=MAX_JSON_DEPTH)
        return "JSON body", value
    if media == "application/x-www-form-urlencoded":
        return "form", last_values(urlencoded(req.body.decode("latin-1")), "form")
    if media == "multipart/form-data":
        assert req.multipart is not None, "multipart types come with multipart bodies"
        if req.multipart.defect:
            raise bad_request("400-form-malformed", "malformed form body")
        files = sorted({name for name, _, filename in req.multipart.parts if filename})
        if files:
            raise bad_request("400-file-upload", "file uploads", fields=files)
        return "form", last_values([(name.encode(), value) for name, value, filename
                                    in req.multipart.parts], "form")
    raise Refused(Expected(415, "415", "UnsupportedMediaType", "unsupported Content-Type",
                           {"content_type": req.content_type or ""}))


def expect(req: Req) -> Expected:
    """The one answer the README promises for ``req``."""
    try:
        expected = _expect(req)
    except Refused as refused:
        expected = refused.expected
    if req.method == "HEAD" and expected.kind == "200":
        expected.kind = "200-head"  # the GET's answer, without its body
    return expected


def options_allow(route: Route) -> list[str]:
    """``Allow`` of an OPTIONS answer: the route's verbs, HEAD where GET runs, OPTIONS."""
    return [*route.verbs, *(["HEAD"] if "GET" in route.verbs else []), "OPTIONS"]


def _expect(req: Req) -> Expected:
    path, _, query = req.target.partition("?")
    found = route_for(path)
    if found is None:
        if req.method not in KNOWN_METHODS:
            return Expected(405, "405-unknown-verb", "MethodNotAllowed", "", allowed=[])
        # Unlike the task routes, the 404 handler does not stream the body: tornado parses a
        # form body before it runs, and answers a broken multipart body with a (JSON) 400.
        if (req.content_type or "").startswith("multipart/form-data") and (
                req.multipart is None or req.multipart.defect):
            if not TORNADO_REFUSES_BROKEN_FORMS:
                return Expected(404, INVALID_BODY, "NotFound", "no route matches")
            raise bad_request(INVALID_BODY, "Invalid body")
        return Expected(404, "404", "NotFound", "no route matches")
    route, match = found
    if req.method not in KNOWN_METHODS:
        return Expected(405, "405-unknown-verb", "MethodNotAllowed", "",
                        allowed=list(route.verbs))
    named = bool(match.re.groupindex)
    raw = match.groupdict() if named else {str(i): g for i, g in enumerate(match.groups())}
    groups: dict[str, str] = {}
    for name, value in raw.items():  # tornado unquotes, then decodes as UTF-8
        try:
            groups[name] = unquote_to_bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise bad_request("400-path-utf8", "Invalid unicode") from None
    path_kwargs = groups if named else {}
    path_args = [] if named else list(groups.values())
    if req.method == "OPTIONS":  # the body is never read: only its Content-Length counts
        if len(req.body) > route.max_body_size and not req.chunk:
            return Expected(413, "413-length", "PayloadTooLarge", "exceeds the limit",
                            {"limit": route.max_body_size})
        return Expected(204, "204-options", allowed=options_allow(route))
    if req.method == "HEAD" and "GET" not in route.verbs:
        return Expected(405, "405-head", "MethodNotAllowed", "HEAD is not mapped",
                        allowed=list(route.verbs))
    verb = "GET" if req.method == "HEAD" else req.method  # HEAD runs the GET
    if verb not in route.verbs:
        return Expected(405, "405-unmapped", "MethodNotAllowed",
                        f"{req.method} is not mapped", allowed=list(route.verbs))
    if len(req.body) > route.max_body_size:
        kind = "413-chunked" if req.chunk else "413-length"
        return Expected(413, kind, "PayloadTooLarge", "exceeds the limit",
                        {"limit": route.max_body_size})
    query_kwargs = last_values(urlencoded(query), "query")
    source, body_kwargs = body_arguments(req)
    kwargs: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for src, values in (("path", path_kwargs), ("query", query_kwargs), (source, body_kwargs)):
        for name, value in values.items():
            if name in kwargs:
                raise bad_request("400-conflict", "given twice", argument=name,
                                  sources=[origin[name], src])
            kwargs[name] = value
            origin[name] = src
    if UNDELIVERABLE in kwargs:
        raise bad_request("400-self", "cannot be passed to a Celery task",
                          argument=UNDELIVERABLE)
    for task in route.tasks:
        for name in kwargs:
            if name in task.fixed:
                raise bad_request("400-fixed", "fixed by the route", argument=name)
    if route.fire:
        return Expected(202, "202", task_ids=len(route.tasks))
    if fails(route):
        assert not path_args, "the fail routes have no path groups"
        if set(kwargs) != {"message"}:
            if route.unchecked:  # the web process cannot check: the worker's TypeError
                return Expected(500, "500-TypeError", "TypeError", failure="TypeError")
            # Checked against fail(message) before anything is sent, on every task of the
            # route: Python names the first unexpected kwarg, else the missing ``message``.
            raise bad_request("400-signature",
                              "task tests.worker_app.fail cannot take these arguments: ",
                              argument=next((name for name in kwargs if name != "message"),
                                            "message"))
        return Expected(500, "500-ValueError", "ValueError", str(kwargs["message"]),
                        failure="ValueError")
    results = [{"args": [*task.args, *path_args], "kwargs": {**task.fixed, **kwargs}}
               for task in route.tasks]
    return Expected(200, "200", result=results[0] if len(results) == 1 else results)


# --------------------------------------------------------------------------------- client


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


class _Stale(Exception):
    """The server had closed the connection before this request: no answer began."""


class Connection:
    """One keep-alive HTTP/1.1 connection speaking raw bytes."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.last_status = 0
        self.reopened = 0

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def exchange(self, req: Req) -> Reply:
        if self.reader is not None and (self.reader.at_eof() or self.reader.exception()):
            self.close()  # the server closed it after the last answer
            self.reopened += 1
        if self.writer is not None:
            try:
                return await self._exchange(req)
            except _Stale:
                self.close()
                self.reopened += 1
        return await self._exchange(req)

    async def _exchange(self, req: Req) -> Reply:
        may_be_closed = self.writer is not None and self.last_status in MAY_CLOSE
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        reader, writer = self.reader, self.writer
        assert reader is not None
        head = req.head(f"127.0.0.1:{self.port}")
        try:
            try:  # until the first line of an answer: the server may have closed already
                writer.write(head if req.expect else head + req.framed_body())
                await writer.drain()
                line = await reader.readline()
            except ConnectionError:
                line = b""
            if not line:
                if may_be_closed:
                    raise _Stale
                raise ConnectionError("the server closed the connection without an answer")
            status, headers = await self._head(reader, line)
            if req.expect and status == 100:
                writer.write(req.framed_body())
                await writer.drain()
                status, headers = await self._head(reader, await reader.readline())
            assert not 100 <= status < 200, f"unexpected interim answer {status}"
            body = await self._body(reader, req, status, headers)
        except BaseException:
            self.close()
            raise
        self.last_status = status
        if headers.get("connection", "").lower() == "close":
            self.close()
        return Reply(status, headers, body)

    @staticmethod
    async def _head(reader: asyncio.StreamReader, line: bytes) -> tuple[int, dict[str, str]]:
        version, status, _ = line.decode("latin-1").split(" ", 2)
        assert version == "HTTP/1.1", line
        headers: dict[str, str] = {}
        while (line := await reader.readline()) != b"\r\n":
            if not line:
                raise ConnectionError("the connection closed inside an answer's headers")
            name, _, value = line.decode("latin-1").partition(":")
            assert name.lower() not in headers, f"header {name} twice"
            headers[name.strip().lower()] = value.strip()
        return int(status), headers

    @staticmethod
    async def _body(reader: asyncio.StreamReader, req: Req, status: int,
                    headers: dict[str, str]) -> bytes:
        if req.method == "HEAD" or status in (204, 304):  # no body, and no length for one
            assert status != 204 or not {"content-length", "transfer-encoding"} & set(headers)
            return b""
        if headers.get("transfer-encoding", "").lower() == "chunked":
            data = b""
            while size := int((await reader.readline()).split(b";")[0], 16):
                data += await reader.readexactly(size)
                await reader.readexactly(2)
            await reader.readexactly(2)
            return data
        assert "content-length" in headers, f"an answer without a length: {headers}"
        return await reader.readexactly(int(headers["content-length"]))


class Client:
    """``CONNECTIONS`` connections sharing a batch of requests."""

    def __init__(self, port: int) -> None:
        self.connections = [Connection(port) for _ in range(CONNECTIONS)]

    async def send_all(self, batch: Sequence[Req]) -> list[Reply]:
        replies: list[Reply | None] = [None] * len(batch)
        queue = iter(range(len(batch)))

        async def work(conn: Connection) -> None:
            for i in queue:
                replies[i] = await asyncio.wait_for(conn.exchange(batch[i]), REQUEST_TIMEOUT)

        await asyncio.gather(*(work(conn) for conn in self.connections))
        assert all(reply is not None for reply in replies)
        return replies  # type: ignore[return-value]

    @property
    def reopened(self) -> int:
        return sum(conn.reopened for conn in self.connections)

    def close(self) -> None:
        for conn in self.connections:
            conn.close()


# ---------------------------------------------------------------------------------- check


def strict_json(data: bytes) -> Any:
    return json.loads(data.decode("utf-8"), parse_constant=_no_constants)


def check(req: Req, exp: Expected, reply: Reply) -> None:
    """Fail, naming the request, unless ``reply`` is exactly the answer ``exp`` describes."""
    where = f"\n{req!r}\n-> {reply.status} {reply.headers} {reply.body[:500]!r}"
    assert reply.status == exp.status, f"expected {exp.status} ({exp.kind}){where}"
    if exp.allowed is not None:
        assert reply.headers.get("allow") == ", ".join(exp.allowed), where
    # No route has cors=: an Origin header (drawn among the extra headers) gets nothing.
    assert not any(name.startswith("access-control-") for name in reply.headers), where
    if exp.status == 204:  # OPTIONS: Allow, and neither a body nor a type
        assert reply.body == b"" and "content-type" not in reply.headers, where
        return
    assert reply.headers.get("content-type", "").startswith("application/json"), where
    if req.method == "HEAD":
        # The GET's answer without its body (the next answer on the connection proves that
        # none came); its Content-Length still counts the body a GET would get.
        assert reply.body == b"", where
        assert int(reply.headers["content-length"]) > 0, where
        return
    try:
        body = strict_json(reply.body)
    except ValueError:
        raise AssertionError(f"the answer is not JSON{where}") from None
    if exp.status == 200:
        assert body == exp.result, f"expected {exp.result!r}{where}"
        return
    if exp.status == 202:
        assert set(body) == {"task_ids"} and len(body["task_ids"]) == exp.task_ids, where
        assert len({str(uuid.UUID(task_id)) for task_id in body["task_ids"]}) == exp.task_ids
        return
    assert isinstance(body, dict) and isinstance(body.get("error"), dict), where
    error = body["error"]
    extra = {"task_id", "state"} if exp.failure else set()
    assert set(body) == {"error", *extra}, where  # never a traceback
    assert error["type"] == exp.error_type, where
    assert isinstance(error["message"], str) and exp.message in error["message"], where
    if exp.failure:
        assert body["state"] == "FAILURE" and uuid.UUID(body["task_id"]), where
        assert set(error) == {"type", "message"}, where
        if exp.failure == "ValueError":
            assert error["message"] == exp.message, where
        return
    detail = dict(exp.detail)
    if exp.allowed is not None:
        detail["allowed"] = exp.allowed
    assert {k: v for k, v in error.items() if k not in ("type", "message")} == detail, where


# ------------------------------------------------------------------------- explicit cases


def _form_part(name: str, value: bytes, filename: str | None = None) -> bytes:
    file = f'; filename="{filename}"' if filename is not None else ""
    return (f'--BoUnDaRy0123\r\nContent-Disposition: form-data; name="{name}"{file}\r\n\r\n'
            ).encode() + value + b"\r\n"


MP = "multipart/form-data; boundary=BoUnDaRy0123"
J = "application/json"
EVERY_REFUSAL = [
    Req("GET", "/nowhere"),
    Req("BREW", "/echo"),
    Req("BREW", "/nowhere", b"{}", J),
    Req("HEAD", "/small"),
    Req("HEAD", "/fail?a=1"),
    Req("OPTIONS", "/small", b"x" * 65, J),
    Req("DELETE", "/fail?message=x", b'{"a": 1}', J),
    Req("GET", "/echo/%FF%FE"),
    Req("POST", "/small", b'{"pad": "' + b"x" * 60 + b'"}', J),
    Req("POST", "/small", b'{"pad": "' + b"x" * 60 + b'"}', J, chunk=7),
    Req("POST", "/echo", b"x" * (MiB + 1), J, expect=True),
    Req("POST", "/echo", b"x" * (MiB + 1), J, chunk=65536, expect=True),
    Req("GET", "/echo?a=%FF&b=1"),
    Req("POST", "/echo", b'{"a": "\xff"}', J),
    Req("POST", "/echo", b'{"a": ', J),
    Req("POST", "/echo", b"[1, 2]", "application/json; charset=utf-8"),
    Req("POST", "/echo", b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", J,
        depth=100_001),
    Req("POST", "/echo", b'{"a": ' + b"[" * 700 + b"]" * 700 + b"}", J, depth=701),
    Req("POST", "/echo", b'{"a": [NaN]}', J),
    Req("POST", "/echo", b'{"a": [0.5, 1e400]}', J),
    Req("GET", "/echo?self=1"),
    Req("POST", "/echo", b'{"a": ' + b"7" * 4301 + b"}", J),
    Req("GET", "/echo?%FF%FE=1"),
    Req("POST", "/echo", b"a=1&b=%FF", FORM_TYPES[0]),
    Req("POST", "/echo", _form_part("f", b"data", "f.txt") + b"--BoUnDaRy0123--\r\n", MP,
        multipart=Multipart((("f", b"data", "f.txt"),))),
    Req("POST", "/echo", _form_part("a", b"1"), MP,
        multipart=Multipart((("a", b"1", None),), "no_final")),
    Req("POST", "/echo", b"hello", "text/plain"),
    Req("PUT", "/nowhere", b"", "multipart/form-data"),
    Req("GET", "/echo/ann?name=bob"),
    Req("POST", "/echo?a=1", b'{"a": 2}', J),
    Req("GET", "/fixed?fixed=no"),
    Req("GET", "/fail?message=kaput"),
    Req("POST", "/fire", b'{"a": 1}', J),
    Req("GET", "/fail"),
    Req("POST", "/fail?message=x", b'{"": 1}', J),
    Req("POST", "/multi-fail", b"message=x&it's=1", FORM_TYPES[0]),
    Req("GET", "/fail-remote?a=1"),
    Req("GET", "/multi-fail?message=boom"),
]
EVERY_SUCCESS = [
    Req("GET", "/echo?a=1&a=2&b&c="),
    Req("GET", "/pos/%C3%A9/x%20y?z=1"),
    Req("GET", "/multi?k=v"),
    Req("GET", "/fail-remote"),
    Req("POST", "/echo", b'{"a": 1, "a": 2, "b": [1, {"c": null}]}', J),
    Req("POST", "/echo", _form_part("a", b"1") + _form_part("a", "\u00e9".encode())
        + _form_part("\u00e9", b"2") + b"--BoUnDaRy0123--\r\n", MP,
        multipart=Multipart((("a", b"1", None), ("a", "\u00e9".encode(), None),
                             ("\u00e9", b"2", None)))),
    Req("PUT", "/echo/x", b"a=%FF&a=ok&b=x+y", FORM_TYPES[1], chunk=3),
    Req("POST", "/echo?verb=1&index=2", b"a=3&%C3%A9=4", "Application/X-WWW-Form-Urlencoded"),
    Req("POST", "/echo", b'{"nested": ' + b"[" * 63 + b"]" * 63 + b"}", J, depth=64),
    Req("POST", "/echo", b'{"nested": ' + b"[" * 48 + b"]" * 48 + b"}",
        "application/vnd.api+json"),
    Req("DELETE", "/echo", b"", "text/plain"),
    Req("POST", "/small", b'{"pad": "' + b"x" * 53 + b'"}', J, expect=True),
    Req("PUT", "/fire", b"", close=True),
    Req("GET", "/fixed?other=1", headers=(("Accept", "text/html"),)),
    Req("HEAD", "/echo?a=1"),
    Req("HEAD", "/multi", headers=(("Origin", "http://evil.example"),)),
    Req("OPTIONS", "/echo/x"),
    Req("OPTIONS", "/fire", b"x" * 5000, J, chunk=1000),
    Req("OPTIONS", "/delete-only", b"{}", J),
]


# -------------------------------------------------------------------------------- fixture


@dataclass
class FuzzServer:
    port: int
    process: psutil.Process
    log: Path

    def rss(self) -> int:
        return int(self.process.memory_info().rss)


def _read_port(proc: subprocess.Popen[bytes], timeout: float) -> int:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            line = proc.stdout.readline().decode()
            if line.startswith("PORT "):
                return int(line.split()[1])
            if not line:
                break
        if proc.poll() is not None:
            break
    raise RuntimeError(f"tests.fuzz_app did not start (exit code {proc.poll()})")


def _wait_until_queue_drained(timeout: float = 60.0) -> None:
    """Fire-and-forget tasks must not keep the session's worker busy for the next tests."""
    conn = blocking_connection()
    try:
        channel = conn.channel()
        deadline = time.monotonic() + timeout
        while channel.queue_declare(worker_app.DEFAULT_QUEUE, passive=True
                                    ).method.message_count:
            assert time.monotonic() < deadline, "the worker did not drain the fuzz tasks"
            time.sleep(0.2)
    finally:
        conn.close()


@pytest.fixture
def fuzz_server(workers: dict[str, CeleryWorker], tmp_path: Path) -> Iterator[FuzzServer]:
    log = tmp_path / "fuzz_app.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "tests.fuzz_app"], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=err)
    try:
        port = _read_port(proc, timeout=30)
        yield FuzzServer(port, psutil.Process(proc.pid), log)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        _wait_until_queue_drained()


# ----------------------------------------------------------------------------------- test


@dataclass
class Tally:
    kinds: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    samples: list[tuple[int, int]] = field(default_factory=list)  # (answered, server RSS)

    @property
    def answered(self) -> int:
        return sum(self.statuses.values())


@pytest.mark.timeout(600)
def test_fuzzed_requests_get_their_documented_json_answer_and_rss_stays_flat(
        fuzz_server: FuzzServer, workers: dict[str, CeleryWorker]) -> None:
    loop = asyncio.new_event_loop()
    client = Client(fuzz_server.port)
    tally = Tally()
    drawn: list[tuple[Req, Expected]] = []
    drawn_kinds: Counter[str] = Counter()  # of the requests hypothesis drew

    def send(pairs: Sequence[tuple[Req, Expected]]) -> None:
        before = tally.answered
        replies = loop.run_until_complete(client.send_all([req for req, _ in pairs]))
        for (req, exp), reply in zip(pairs, replies, strict=True):
            check(req, exp, reply)
            tally.kinds[exp.kind] += 1
            tally.statuses[reply.status] += 1
        if before // 5_000 != tally.answered // 5_000:
            tally.samples.append((tally.answered, fuzz_server.rss()))

    @settings(max_examples=DRAWN_BATCHES, database=None, deadline=None,
              phases=(Phase.explicit, Phase.generate, Phase.shrink), print_blob=True,
              report_multiple_bugs=False, suppress_health_check=list(HealthCheck))
    @given(batch=st.lists(requests(), min_size=BATCH, max_size=BATCH))
    @example(batch=EVERY_REFUSAL)
    @example(batch=EVERY_SUCCESS)
    def fuzz(batch: list[Req]) -> None:
        pairs = [(req, expect(req)) for req in batch]
        send(pairs)
        drawn.extend(pairs)
        if batch not in (EVERY_REFUSAL, EVERY_SUCCESS):
            drawn_kinds.update(exp.kind for _, exp in pairs)

    started = time.monotonic()
    try:
        fuzz()  # phase 1: draw, send and check; shrinks to the simplest failing requests
        drawn_time = time.monotonic() - started
        offset = 0
        while tally.answered < REQUESTS:  # phase 2: replay them, checked again, to 50 000
            send(drawn[offset:offset + REPLAY_BATCH])
            offset = (offset + REPLAY_BATCH) % len(drawn)
        tally.samples.append((tally.answered, fuzz_server.rss()))
    finally:
        client.close()
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()

    warm = next(rss for count, rss in tally.samples if count >= WARM_UP)
    end = tally.samples[-1][1]
    print(f"\n{len(drawn)} drawn requests in {drawn_time:.0f}s, {tally.answered} requests "
          f"in all in {time.monotonic() - started:.0f}s; {client.reopened} connections "
          "reopened after the server closed them")
    print(f"statuses {dict(sorted(tally.statuses.items()))}")
    print(f"drawn categories {dict(sorted(drawn_kinds.items()))}")
    print("server RSS (requests: MiB) " + ", ".join(
        f"{count}: {rss / MiB:.1f}" for count, rss in tally.samples))
    print(f"RSS growth after the warm-up: {(end - warm) / MiB:+.2f} MiB "
          f"(bound {RSS_GROWTH_BOUND / MiB:.0f} MiB)")
    assert tally.answered >= REQUESTS
    assert fuzz_server.process.is_running()
    assert workers["main"].proc is not None and workers["main"].proc.poll() is None
    assert end - warm <= RSS_GROWTH_BOUND, tally.samples
    # The draw itself reaches every category (the explicit examples check each one anyway).
    assert set(drawn_kinds) == KINDS, drawn_kinds
    log = fuzz_server.log.read_text(errors="replace")
    assert "Traceback" not in log and "Uncaught exception" not in log, log[-3000:]
