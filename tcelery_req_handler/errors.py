"""Every exception this library raises, in one tree.

::

    TCeleryError                  base class; catch this to catch them all
    ├── TaskError                 the task ran (or was meant to) and did not succeed
    │   ├── TaskFailed            the worker raised; carries the remote type, message, traceback
    │   ├── TaskRevoked           the task was revoked or expired before it ran
    │   └── TaskTimeout           no ready state arrived in time (also a TimeoutError)
    ├── BrokerError               talking to RabbitMQ went wrong
    │   ├── BrokerUnavailable     no connection, or the broker blocked us: retry later
    │   │   └── Overloaded        too many results awaited at once (``max_pending``): shed load
    │   └── PublishError          the broker refused the message (nack, unroutable, channel closed)
    ├── ResultDecodeError         a reply came in a content type the app does not accept
    ├── UnknownTask               no state is known for that id (rpc:// knows only its own)
    ├── ConfigurationError        a bad broker URL, option or route, found before any I/O
    └── RequestError              an HTTP request that cannot be mapped to task arguments

The HTTP handlers map each leaf to one status code; see the README's table.
"""

from __future__ import annotations

from typing import Any


class TCeleryError(Exception):
    """Base class of every error raised by tcelery_req_handler."""


class TaskError(TCeleryError):
    """A task did not produce a value. ``task_id`` names it; ``state`` is its last known state."""

    def __init__(self, message: str, *, task_id: str, state: str) -> None:
        super().__init__(message)
        self.task_id = task_id
        self.state = state


class TaskFailed(TaskError):
    """The worker raised while running the task (state FAILURE).

    ``exc_type``, ``exc_message`` and ``exc_module`` describe the remote exception;
    ``traceback`` is the worker's formatted traceback, when it sent one.
    """

    def __init__(
        self,
        task_id: str,
        exc_type: str,
        exc_message: str,
        *,
        exc_module: str | None = None,
        traceback: str | None = None,
    ) -> None:
        super().__init__(f"{exc_type}: {exc_message}", task_id=task_id, state="FAILURE")
        self.exc_type = exc_type
        self.exc_message = exc_message
        self.exc_module = exc_module
        self.traceback = traceback


class TaskRevoked(TaskError):
    """The task was revoked, or expired before a worker ran it (state REVOKED)."""

    def __init__(self, task_id: str, reason: str = "revoked") -> None:
        super().__init__(f"task {task_id} was revoked: {reason}", task_id=task_id, state="REVOKED")
        self.reason = reason


class TaskTimeout(TaskError, TimeoutError):
    """No ready state arrived within the timeout. The task may still run."""

    def __init__(self, task_id: str, timeout: float, state: str = "PENDING") -> None:
        super().__init__(
            f"task {task_id} did not finish within {timeout:g}s (last state {state})",
            task_id=task_id,
            state=state,
        )
        self.timeout = timeout


class BrokerError(TCeleryError):
    """Talking to the broker went wrong."""


class BrokerUnavailable(BrokerError):
    """No usable broker connection right now, or the broker blocked publishing.

    Safe to retry later. ``retry_after`` is a hint in seconds. ``service`` names what is
    down: ``"broker"`` or ``"result backend"`` (both answer the same 503).
    """

    def __init__(self, message: str, *, retry_after: float = 1.0,
                 service: str = "broker") -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.service = service


class PublishError(BrokerError):
    """The broker did not accept a message: a nack, an unroutable message, a closed channel."""

    def __init__(self, message: str, *, task_id: str | None = None) -> None:
        super().__init__(message)
        self.task_id = task_id


class ResultDecodeError(TCeleryError):
    """A reply arrived in a content type that the app's accept lists refuse (e.g. pickle)."""

    def __init__(self, task_id: str, content_type: str) -> None:
        super().__init__(f"reply for task {task_id} refused: content type {content_type!r} "
                         "is not in result_accept_content")
        self.task_id = task_id
        self.content_type = content_type


class ConfigurationError(TCeleryError, ValueError):
    """A broker URL, producer option or route definition is wrong."""


class RequestError(TCeleryError):
    """An HTTP request could not be turned into task arguments.

    ``status`` is the HTTP status to answer with (400, 413, 415, ...), ``detail`` extra JSON.
    """

    def __init__(self, status: int, message: str, **detail: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.detail = detail


class Overloaded(BrokerUnavailable):
    """The process already awaits ``max_pending`` results: a new waiting send is refused at
    once, before anything is published, rather than piling up. Fire-and-forget sends are not
    bounded by it. Retry after ``retry_after`` seconds, as for any BrokerUnavailable."""

    def __init__(self, message: str, *, retry_after: float = 1.0, limit: int = 0) -> None:
        super().__init__(message, retry_after=retry_after, service="producer")
        self.limit = limit


class UnknownTask(TCeleryError, LookupError):
    """No state is known for ``task_id``: with ``rpc://`` only the tasks this process sent
    (and recorded) can be looked up; persistent backends read an unknown id as PENDING.
    Also raised for a group id the backend keeps no group for (``kind="group"``)."""

    def __init__(self, task_id: str, why: str, *, kind: str = "task") -> None:
        super().__init__(f"no {kind} {task_id} is known here: {why}")
        self.task_id = task_id
        self.kind = kind
