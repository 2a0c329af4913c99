"""What every handler of the package shares: JSON bodies for errors too, never HTML."""

from __future__ import annotations

import logging
import traceback
from typing import Any, ClassVar

from tornado.web import HTTPError, RequestHandler

from ..errors import TCeleryError
from .responses import encode, error_body, error_response

log = logging.getLogger("tcelery_req_handler.web")

#: Seconds a waiting route waits for its tasks, and the longest ``?wait`` of a status route.
DEFAULT_TIMEOUT = 30.0


class JSONErrorsMixin(RequestHandler):
    """Errors as JSON ``{"error": {...}}``; tracebacks only when the app runs with debug.

    Also what every route answers alike: ``HEAD`` where ``GET`` is allowed (the GET without
    its body, as Tornado does), ``OPTIONS`` (204 with ``Allow``), and CORS for the origins in
    ``cors_origins`` (the routes' ``cors=`` option; ``"*"`` allows any).
    """

    cors_origins: ClassVar[frozenset[str] | None] = None
    #: Whether HEAD runs GET here (not on event streams, which would never end).
    head_runs_get: ClassVar[bool] = True

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        origins = self.cors_origins
        if origins is not None:
            origin = self.request.headers.get("Origin")
            if origin is not None and ("*" in origins or origin in origins):
                self.set_header("Access-Control-Allow-Origin", origin)
                self.set_header("Access-Control-Expose-Headers",
                                "Location, Retry-After, X-Cache")
                self.set_header("Vary", "Origin")

    def method_allowed(self, method: str) -> bool:
        """True for the route's verbs, HEAD where GET runs, and OPTIONS."""
        allowed = self.allowed_methods()
        return method in allowed or method == "OPTIONS" or (
            method == "HEAD" and self.head_runs_get and "GET" in allowed)

    def head(self, *args: Any, **kwargs: Any) -> Any:
        return self.get(*args, **kwargs)

    def options(self, *args: Any, **kwargs: Any) -> None:
        """204 with ``Allow`` (and, for an allowed origin, the CORS preflight answer)."""
        allowed = self.allowed_methods()
        verbs = [*allowed, *(["HEAD"] if self.head_runs_get and "GET" in allowed else []),
                 "OPTIONS"]
        self.set_header("Allow", ", ".join(verbs))
        if self.cors_origins is not None and "Access-Control-Allow-Origin" in self._headers:
            self.set_header("Access-Control-Allow-Methods", ", ".join(verbs))
            requested = self.request.headers.get("Access-Control-Request-Headers")
            self.set_header("Access-Control-Allow-Headers", requested or "Content-Type")
            self.set_header("Access-Control-Max-Age", "600")
        self.clear_header("Content-Type")
        self.set_status(204)
        self.finish()

    def compute_etag(self) -> None:
        return None  # task results are not cacheable; skip hashing every body

    def allowed_methods(self) -> list[str]:
        return []

    def write_json(self, value: Any, status: int = 200) -> None:
        """Finish the response with ``value`` as JSON."""
        self.set_status(status)
        self.finish(encode(value))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc_info = kwargs.get("exc_info")
        error = exc_info[1] if exc_info else None
        debug = bool(self.settings.get("serve_traceback"))
        if isinstance(error, TCeleryError):
            status_code, headers, body = error_response(error, debug=debug)
            self.set_status(status_code)
            for name, value in headers.items():
                self.set_header(name, value)
        else:
            reason = (error.log_message if isinstance(error, HTTPError) and error.log_message
                      else self._reason)
            kind = "InternalServerError" if status_code >= 500 else self._reason.replace(" ", "")
            message = "internal server error" if status_code >= 500 else reason
            body = error_body(kind, message)
            if status_code == 405:
                self.set_header("Allow", ", ".join(self.allowed_methods()))
                body["error"]["allowed"] = self.allowed_methods()
        if debug and exc_info and "traceback" not in body:
            body["traceback"] = "".join(traceback.format_exception(*exc_info))
        self.finish(encode(body))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, TCeleryError):
            log.info("%s %s: %s", self.request.method, self.request.uri, value)
        else:
            super().log_exception(typ, value, tb)
