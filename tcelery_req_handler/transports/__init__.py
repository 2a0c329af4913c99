"""How a message reaches a broker, behind one small interface.

A transport connects, publishes a built message and returns once the broker holds it, reports
whether it is connected, and closes. It never decides what a message contains (that is
:mod:`tcelery_req_handler.messages`) nor where results come from (that is
:mod:`tcelery_req_handler.backends`). A new broker is a new module here that implements
:class:`Transport`; :func:`transport_kind` names it from the broker URL's scheme:
``amqp.py`` (RabbitMQ, with publisher confirms) and ``memory.py`` (the embedded mode).
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError

if TYPE_CHECKING:
    from ..messages import ControlMessage, TaskMessage


class Transport(abc.ABC):
    """One broker connection, kept open by the transport itself (reconnecting as it must)."""

    #: The URL scheme family, e.g. ``"amqp"``; result sources that need a given transport
    #: (``rpc://`` needs AMQP) check it.
    kind: str = ""

    @property
    @abc.abstractmethod
    def connected(self) -> bool:
        """True while a usable connection is open."""

    @abc.abstractmethod
    async def connect(self) -> None:
        """Open the connection now; BrokerUnavailable if the broker cannot be reached."""

    @abc.abstractmethod
    async def publish(self, message: TaskMessage | ControlMessage, timeout: float) -> None:
        """Publish and return once the broker holds the message, within ``timeout`` seconds.

        Raises BrokerUnavailable (nothing can be known to be sent, retry later) or
        PublishError (the broker refused it). Never publishes once ``timeout`` has passed.
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Close within the transport's own bound; idempotent."""

    def describe(self) -> dict[str, Any]:
        """Where the transport points, for health reports and logs (no secrets)."""
        return {"kind": self.kind, "connected": self.connected}


def transport_kind(broker_url: str) -> str:
    """The transport family a broker URL names, or ConfigurationError naming the scheme."""
    url = broker_url.split(";")[0].strip()
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in ("amqp", "pyamqp", "amqps", "pyamqps"):
        return "amqp"
    if scheme == "memory":
        return "memory"
    raise ConfigurationError(
        f"broker URL scheme {scheme or url!r} is not supported: use amqp://, pyamqp:// or "
        "amqps:// (RabbitMQ), or memory:// (the embedded mode: a worker in this process)")
