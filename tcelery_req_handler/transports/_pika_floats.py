"""Floats in AMQP headers, as py-amqp (and so Celery's own publisher) sends them.

pika encodes no ``float`` in a header table (it raises ``UnsupportedAMQPFieldException``),
though it decodes one; Celery's headers hold floats (``timelimit=[1.5, None]``, a user's
``headers=``). This adds the AMQP ``d`` (double) field pika lacks, leaving every other type
to pika. Imported once, by the AMQP transport.
"""

from __future__ import annotations

import struct
from typing import Any

import pika.data

_encode_value = pika.data.encode_value


def _encode_value_with_floats(pieces: list[bytes], value: Any) -> int:
    if isinstance(value, float):
        pieces.append(struct.pack(">cd", b"d", value))
        return 9
    result: int = _encode_value(pieces, value)
    return result


if getattr(pika.data.encode_value, "__name__", "") != _encode_value_with_floats.__name__:
    pika.data.encode_value = _encode_value_with_floats
