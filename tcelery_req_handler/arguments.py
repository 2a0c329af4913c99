"""Request → task arguments: path groups, query, form and JSON bodies, with precise 4xx errors.

* positional path groups → ``args``; named path groups → ``kwargs``;
* query and form arguments → ``kwargs``, the last value of each name (as the original did);
* a JSON object body (``Content-Type: application/json``) → ``kwargs``;
* the same name from two sources is a 400, never a silent override.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from tornado import httputil

from .errors import RequestError

FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


def _decode(name: str, value: bytes, source: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError(400, f"{source} argument {name!r} is not valid UTF-8",
                           argument=name, source=source) from None


def _last_values(arguments: Mapping[str, Sequence[bytes]], source: str) -> dict[str, str]:
    return {name: _decode(name, values[-1], source)
            for name, values in arguments.items() if values}


def parse_json_object(body: bytes) -> dict[str, Any]:
    """Decode a JSON body that must be an object; 400 with the reason otherwise."""
    try:
        value = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise RequestError(400, "JSON body is not valid UTF-8") from None
    except json.JSONDecodeError as exc:
        raise RequestError(400, f"malformed JSON body: {exc.msg} at line {exc.lineno} "
                                f"column {exc.colno}") from None
    except RecursionError:
        raise RequestError(400, "JSON body is nested too deeply") from None
    if not isinstance(value, dict):
        raise RequestError(400, f"JSON body must be an object, not {type(value).__name__}")
    return value


def body_arguments(headers: httputil.HTTPHeaders, body: bytes) -> tuple[str, dict[str, Any]]:
    """Arguments carried by the request body, and the name of their source."""
    if not body:
        return "body", {}
    content_type = headers.get("Content-Type", "")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type == "application/json" or media_type.endswith("+json"):
        return "JSON body", parse_json_object(body)
    if media_type in FORM_TYPES:
        form: dict[str, list[bytes]] = {}
        files: dict[str, list[httputil.HTTPFile]] = {}
        try:
            httputil.parse_body_arguments(content_type, body, form, files, headers)
        except httputil.HTTPInputError as exc:
            raise RequestError(400, f"malformed form body: {exc}") from None
        if files:
            raise RequestError(400, "file uploads are not supported by task routes",
                               fields=sorted(files))
        return "form", _last_values(form, "form")
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
    query = _last_values(request.query_arguments, "query")
    kwargs = merge_sources(("path", path_kwargs), ("query", query),
                           body_arguments(request.headers, body))
    return tuple(path_args), kwargs
