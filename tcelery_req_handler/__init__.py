"""tcelery-req-handler: route Tornado HTTP requests to Celery tasks over a nonblocking producer.

The public API is everything in ``__all__``; the rest of the package is private.
"""

from .errors import (
    BrokerError,
    BrokerUnavailable,
    ConfigurationError,
    Overloaded,
    PublishError,
    RequestError,
    ResultDecodeError,
    TaskError,
    TaskFailed,
    TaskRevoked,
    TaskTimeout,
    TCeleryError,
    UnknownTask,
)
from .groups import TaskGroup
from .producer import Producer, get_producer, setup_nonblocking_producer
from .results import TaskResult
from .web.handlers import (
    TaskHandler,
    TaskSpec,
    TCeleryAsyncHandler,
    TCeleryBaseHandler,
    TCeleryNotFoundHandler,
    TCeleryReqHandler,
)
from .web.routes import (
    routes,
    tcelery_async_routes,
    tcelery_group_routes,
    tcelery_health_routes,
    tcelery_metrics_routes,
    tcelery_routes,
    tcelery_status_routes,
)

__version__ = "1.1.0"

__all__ = [
    "BrokerError",
    "BrokerUnavailable",
    "ConfigurationError",
    "Overloaded",
    "Producer",
    "PublishError",
    "RequestError",
    "ResultDecodeError",
    "TCeleryAsyncHandler",
    "TCeleryBaseHandler",
    "TCeleryError",
    "TCeleryNotFoundHandler",
    "TCeleryReqHandler",
    "TaskError",
    "TaskFailed",
    "TaskGroup",
    "TaskHandler",
    "TaskResult",
    "TaskRevoked",
    "TaskSpec",
    "TaskTimeout",
    "UnknownTask",
    "__version__",
    "get_producer",
    "routes",
    "setup_nonblocking_producer",
    "tcelery_async_routes",
    "tcelery_group_routes",
    "tcelery_health_routes",
    "tcelery_metrics_routes",
    "tcelery_routes",
    "tcelery_status_routes",
]
