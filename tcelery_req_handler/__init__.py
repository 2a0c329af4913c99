"""tcelery-req-handler: route Tornado HTTP requests to Celery tasks over a nonblocking producer.

The public API is everything in ``__all__``; the rest of the package is private.
"""

from .errors import (
    BrokerError,
    BrokerUnavailable,
    ConfigurationError,
    PublishError,
    RequestError,
    ResultDecodeError,
    TaskError,
    TaskFailed,
    TaskRevoked,
    TaskTimeout,
    TCeleryError,
)
from .producer import Producer, get_producer, setup_nonblocking_producer
from .results import TaskResult

__all__ = [
    "BrokerError",
    "BrokerUnavailable",
    "ConfigurationError",
    "Producer",
    "PublishError",
    "RequestError",
    "ResultDecodeError",
    "TCeleryError",
    "TaskError",
    "TaskFailed",
    "TaskResult",
    "TaskRevoked",
    "TaskTimeout",
    "get_producer",
    "setup_nonblocking_producer",
]
