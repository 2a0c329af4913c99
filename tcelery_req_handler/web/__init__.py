"""The Tornado side: routes, handlers and what they answer.

* ``routes.py``: the route factories (waiting, fire-and-forget, status);
* ``handlers.py``: the task routes' handlers and ``task_handler``;
* ``status.py``: task status, ``?wait``, revoke; ``events.py``: the one SSE writer;
* ``arguments.py``: request → task arguments; ``responses.py``: JSON, and errors → statuses;
* ``base.py``: what every handler shares (JSON errors).
"""
