"""Request → task arguments: path groups, query, form and JSON bodies, with precise 4xx errors.

* positional path groups → ``args``; named path groups → ``kwargs``;
* query and form arguments → ``kwargs``, the last value of each name (as the original did);
* a JSON object body (``Content-Type: application/json``) → ``kwargs``;
* the same name from two sources is a 400, never a silent override;
* ``self`` is a 400: Celery calls every task as ``task(self, *args, **kwargs)``;
* JSON nested deeper than ``MAX_JSON_DEPTH``, ``NaN`` / ``Infinity`` and numbers Python
  refuses to parse are a 400: they would fail later, in the worker or in the response.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from tornado import httputil
from tornado.log import gen_log

from ..errors import RequestError

FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
#: Deepest JSON body accepted. Far deeper than any real payload; a few hundred levels would
#: exhaust the recursion limit of the worker's or the response's JSON codec.
MAX_JSON_DEPTH = 64


def _utf8(value: bytes, what: str, **detail: Any) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError(400, f"{what} is not valid UTF-8", **detail) from None


def _last_values(arguments: Mapping[str, Sequence[bytes]], source: str, *,
                 latin1_names: bool) -> dict[str, str]:
    """The last value of each argument, decoded. Tornado decodes URL-encoded argument names
    as latin-1 (``latin1_names``); they are re-decoded here as the UTF-8 they are."""
    values: dict[str, str] = {}
    for name, given in arguments.items():
        if latin1_names and not name.isascii():
            name = _utf8(name.encode("latin-1"), f"{source} argument name", source=source)
        if given:
            values[name] = _utf8(given[-1], f"{source} argument {name!r}", argument=name,
                                 source=source)
    return values


def _no_constant(name: str) -> Any:
    raise RequestError(400, f"JSON body contains {name}, which JSON does not allow")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400: a float overflow, echoed back it is not JSON
        raise RequestError(400, f"JSON body has a number out of range: {text[:40]}")
    return value


def _depth_exceeds(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node
        for child in children:
            if isinstance(child, (dict, list)):
                if depth >= limit:
                    return True
                stack.append((child, depth + 1))
    return False


def parse_json_object(body: bytes) -> dict[str, Any]:
    """Decode a JSON body that must be an object; 400 with the reason otherwise."""
    text = _utf8(body, "JSON body")
    try:
        value = json.loads(text, parse_constant=_no_constant, parse_float=_finite)
    except json.JSONDecodeError as exc:
        raise RequestError(400, f"malformed JSON body: {exc.msg} at line {exc.lineno} "
                                f"column {exc.colno}") from None
    except RecursionError:
        raise RequestError(400, f"JSON body is nested deeper than {MAX_JSON_DEPTH} levels",
                           limit=MAX_JSON_DEPTH) from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise RequestError(400, f"JSON body has a value that cannot be read: {exc}") from None
    if not isinstance(value, dict):
        raise RequestError(400, f"JSON body must be an object, not {type(value).__name__}")
    # Counting brackets (strings included) bounds the depth from above, at C speed: only a
    # body with more of them than the limit needs the walk.
    if body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH and \
            _depth_exceeds(value, MAX_JSON_DEPTH):
        raise RequestError(400, f"JSON body is nested deeper than {MAX_JSON_DEPTH} levels",
                           limit=MAX_JSON_DEPTH)
    return value


def parse_form_body(content_type: str, body: bytes, arguments: dict[str, list[bytes]],
                    files: dict[str, list[httputil.HTTPFile]],
                    headers: httputil.HTTPHeaders) -> None:
    """``httputil.parse_body_arguments``, raising ``HTTPInputError`` for a body it refuses on
    every Tornado version: before 6.5 it only logged a warning (a malformed form or multipart
    body, an unsupported Content-Encoding) and dropped the body. The warning is caught on
    ``gen_log`` itself, whatever level or filter the app gave that logger."""
    refusals: list[str] = []

    def refuse(message: str, *args: Any, **_: Any) -> None:
        refusals.append(message % args if args else message)

    gen_log.warning = refuse  # type: ignore[method-assign, assignment]
    try:
        httputil.parse_body_arguments(content_type, body, arguments, files, headers)
    finally:
        del gen_log.warning  # the Logger method again
    if refusals:
        raise httputil.HTTPInputError(refusals[0])


def body_arguments(headers: httputil.HTTPHeaders, body: bytes) -> tuple[str, dict[str, Any]]:
    """Arguments carried by the request body, and the name of their source."""
    if not body:
        return "body", {}
    content_type = headers.get("Content-Type", "")
    media_type, _, parameters = content_type.partition(";")
    media_type = media_type.strip().lower()
    if media_type == "application/json" or media_type.endswith("+json"):
        return "JSON body", parse_json_object(body)
    if media_type in FORM_TYPES:
        form: dict[str, list[bytes]] = {}
        files: dict[str, list[httputil.HTTPFile]] = {}
        try:
            # tornado matches the media type case-sensitively; media types are not
            parse_form_body(f"{media_type};{parameters}", body, form, files, headers)
        except httputil.HTTPInputError as exc:
            raise RequestError(400, f"malformed form body: {exc}") from None
        if files:
            raise RequestError(400, "file uploads are not supported by task routes",
                               fields=sorted(files))
        return "form", _last_values(form, "form",
                                    latin1_names=media_type == FORM_TYPES[0])
    raise RequestError(415, f"unsupported Content-Type {content_type!r}: send "
                            "application/json or a form", content_type=content_type)


def merge_sources(*sources: tuple[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Merge named argument sources; a name given by two sources is a 400."""
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for source, values in sources:
        for name, value in values.items():
            if name in merged:
                raise RequestError(400, f"argument {name!r} given twice: in the "
                                        f"{origin[name]} and in the {source}",
                                   argument=name, sources=[origin[name], source])
            merged[name] = value
            origin[name] = source
    return merged


def request_arguments(
    request: httputil.HTTPServerRequest,
    body: bytes,
    path_args: Sequence[str],
    path_kwargs: Mapping[str, str],
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The default mapping of one request to a task's ``(args, kwargs)``."""
    query = _last_values(request.query_arguments, "query", latin1_names=True)
    kwargs = merge_sources(("path", path_kwargs), ("query", query),
                           body_arguments(request.headers, body))
    if "self" in kwargs:
        raise RequestError(400, "argument 'self' cannot be passed to a Celery task",
                           argument="self")
    return tuple(path_args), kwargs
