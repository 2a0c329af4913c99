"""What every handler of the package shares: JSON bodies for errors too, never HTML."""

from __future__ import annotations

import logging
import traceback
from typing import Any

from tornado.web import HTTPError, RequestHandler

from ..errors import TCeleryError
from .responses import encode, error_body, error_response

log = logging.getLogger("tcelery_req_handler.web")

#: Seconds a waiting route waits for its tasks, and the longest ``?wait`` of a status route.
DEFAULT_TIMEOUT = 30.0


class JSONErrorsMixin(RequestHandler):
    """Errors as JSON ``{"error": {...}}``; tracebacks only when the app runs with debug."""

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=UTF-8")

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
