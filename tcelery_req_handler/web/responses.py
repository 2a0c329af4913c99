"""JSON response bodies, and the one map from errors and task states to HTTP statuses.

=====================  ======  ===============================================================
what happened          status  body
=====================  ======  ===============================================================
tasks succeeded        200     the result (one task) or a list of results (several)
fire and forget        202     ``{"task_ids": [...]}``, after the broker confirmed each one
bad arguments          400     ``{"error": {"type": "BadRequest", "message": ...}}``
verb without tasks     405     ``Allow`` header lists the verbs that have tasks
unknown task id        404     ``rpc://`` only: ``{"error": ..., "task_id": ...}``
task revoked           409     ``{"error": ..., "task_id": ..., "state": "REVOKED"}``
body too large         413
unsupported media      415
task failed            500     ``{"error": {"type", "message"}, "task_id", "state": "FAILURE"}``
broker refused / bad   502     ``PublishError`` (nack, unroutable) or an undecodable reply
broker unavailable     503     ``Retry-After`` header; also when the in-flight bound is full
result timed out       504     ``{"error": ..., "task_id": ..., "state": <last known state>}``
=====================  ======  ===============================================================
"""

from __future__ import annotations

import json
import math
from typing import Any

from ..errors import (
    BrokerUnavailable,
    Overloaded,
    PublishError,
    RequestError,
    ResultDecodeError,
    TaskFailed,
    TaskRevoked,
    TaskTimeout,
    TCeleryError,
    UnknownTask,
)

_ENCODER = json.JSONEncoder(separators=(",", ":"), default=str)


def encode(value: Any) -> bytes:
    """Compact JSON; ``</`` is escaped so no ``</script>`` can ever be reflected."""
    return _ENCODER.encode(value).replace("</", "<\\/").encode("utf-8")


def error_body(kind: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"type": kind, "message": message}, **extra}


def error_response(error: BaseException, *, debug: bool = False
                   ) -> tuple[int, dict[str, str], dict[str, Any]]:
    """Map an error to ``(status, headers, body)``."""
    name = type(error).__name__
    if isinstance(error, RequestError):
        kinds = {400: "BadRequest", 413: "PayloadTooLarge", 415: "UnsupportedMediaType"}
        body = error_body(kinds.get(error.status, name), error.message)
        body["error"].update(error.detail)
        return error.status, {}, body
    if isinstance(error, TaskFailed):
        body = error_body(error.exc_type, error.exc_message, task_id=error.task_id,
                          state="FAILURE")
        if debug and error.traceback:
            body["traceback"] = error.traceback
        return 500, {}, body
    if isinstance(error, UnknownTask):
        return 404, {}, error_body(name, str(error), **{f"{error.kind}_id": error.task_id})
    if isinstance(error, TaskRevoked):
        return 409, {}, error_body(name, str(error), task_id=error.task_id, state="REVOKED")
    if isinstance(error, TaskTimeout):
        return 504, {}, error_body(name, str(error), task_id=error.task_id, state=error.state)
    if isinstance(error, BrokerUnavailable):
        retry_after = str(max(1, math.ceil(error.retry_after)))
        # Our own words only: the cause (a pika or redis-py exception) goes to the log.
        message = str(error) if isinstance(error, Overloaded) else \
            f"the {error.service} is unavailable; retry in {retry_after} s"
        return 503, {"Retry-After": retry_after}, error_body(name, message)
    if isinstance(error, (PublishError, ResultDecodeError)):
        return 502, {}, error_body(name, str(error),
                                   task_id=getattr(error, "task_id", None))
    if isinstance(error, TCeleryError):
        return 500, {}, error_body(name, str(error))
    return 500, {}, error_body("InternalServerError", "internal server error")
