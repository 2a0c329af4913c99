"""The example's Celery tasks: CRUD on users, and a long ``report`` that reports progress.

They are called by the HTTP layer, which maps positional URL groups to ``args``, named URL
groups to ``kwargs`` and query / form / JSON-object fields to ``kwargs``. So every value may
arrive as a string (``user_id`` from the URL, ``steps`` from a form): the tasks convert and
validate their own arguments, and raise ``ValueError`` (bad input) or ``UserNotFound``
(a ``LookupError``) with a message fit to show the client.

Task names are pinned to ``backend.v1.tasks.<function>``: the worker and the web app agree on
them even if one of them imports this module under another package path.
"""

from __future__ import annotations

import re
import time
from typing import Any

from celery import Task

from . import app, storage
from .storage import User

_NAME_PREFIX = "backend.v1.tasks"
_DIGITS = re.compile(r"[0-9]+")
LIST_FILTERS: frozenset[str] = frozenset({"name"})
MAX_REPORT_STEPS = 100
MAX_REPORT_DELAY = 5.0
#: ``POST /v1/report`` waits 60 s for the result; a longer report would only end in a 504.
MAX_REPORT_SECONDS = 50.0


class UserNotFound(LookupError):
    """No user has the requested id.

    The message is the only constructor argument, so Celery can rebuild the exception on
    the client side from the JSON failure (``exc_type``, ``exc_message``, ``exc_module``).
    """

    def __init__(self, message: str, *, user_id: int | None = None) -> None:
        super().__init__(message)
        self.user_id = user_id

    @classmethod
    def for_id(cls, user_id: int) -> UserNotFound:
        return cls(f"user {user_id} not found", user_id=user_id)


#: Expected failures (bad input, unknown id): the worker logs them in one line, no traceback.
CLIENT_ERRORS: tuple[type[Exception], ...] = (ValueError, UserNotFound)


# -- argument parsing: strings from URLs and forms, or JSON values ----------------------------
def parse_user_id(value: object) -> int:
    """An id from the URL (``"42"``) or JSON (``42``); ValueError if it is not a number."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and _DIGITS.fullmatch(value.strip()):
        return int(value.strip())
    raise ValueError(f"user_id must be a non-negative integer, got {value!r}")


def parse_name(value: object) -> str:
    """A non-empty name, surrounding whitespace removed."""
    if not isinstance(value, str):
        raise ValueError(f"name must be a string, got {type(value).__name__}")
    name = value.strip()
    if not name:
        raise ValueError("name must not be empty")
    return name


def parse_email(value: object) -> str | None:
    """An address containing ``@``; None or an empty string mean "no email"."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"email must be a string, got {type(value).__name__}")
    email = value.strip()
    if not email:
        return None
    if "@" not in email:
        raise ValueError(f"email {email!r} is not an address (no '@')")
    return email


def parse_float(value: object, field: str, low: float, high: float) -> float:
    """A number within ``[low, high]``, from a JSON number or a form string."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise ValueError(f"{field} must be a number, got {value!r}") from None
    else:
        raise ValueError(f"{field} must be a number, got {value!r}")
    if not low <= number <= high:  # also refuses nan
        raise ValueError(f"{field} must be between {low:g} and {high:g}, got {value!r}")
    return number


def parse_int(value: object, field: str, low: int, high: int) -> int:
    """An integer within ``[low, high]``; ``3`` and ``"3"`` pass, ``3.5`` does not."""
    number = parse_float(value, field, low, high)
    if not number.is_integer():
        raise ValueError(f"{field} must be an integer, got {value!r}")
    return int(number)


# -- tasks ----------------------------------------------------------------------------------
@app.task(name=f"{_NAME_PREFIX}.list_users", throws=CLIENT_ERRORS)
def list_users(**filters: Any) -> list[User]:
    """All users, or only those named ``name``. Any other filter is refused by name,
    so a typo in a query string fails loudly instead of listing everyone."""
    unknown = sorted(set(filters) - LIST_FILTERS)
    if unknown:
        raise ValueError(f"unknown filter(s): {', '.join(unknown)} "
                         f"(supported: {', '.join(sorted(LIST_FILTERS))})")
    name = filters.get("name")
    return storage.list_users(None if name is None else parse_name(name))


@app.task(name=f"{_NAME_PREFIX}.create_user", throws=CLIENT_ERRORS)
def create_user(name: str, email: str | None = None) -> User:
    """Create a user; ValueError if ``name`` is empty or ``email`` has no ``@``."""
    return storage.create_user(parse_name(name), parse_email(email))


@app.task(name=f"{_NAME_PREFIX}.get_user", throws=CLIENT_ERRORS)
def get_user(user_id: int | str) -> User:
    """The user with this id; UserNotFound if there is none."""
    uid = parse_user_id(user_id)
    user = storage.get_user(uid)
    if user is None:
        raise UserNotFound.for_id(uid)
    return user


@app.task(name=f"{_NAME_PREFIX}.update_user", throws=CLIENT_ERRORS)
def update_user(user_id: int | str, name: str | None = None,
                email: str | None = None) -> User:
    """Change ``name`` and/or ``email`` (an empty email clears it); omitted fields stay.

    ValueError if neither is given, UserNotFound if the user does not exist.
    """
    uid = parse_user_id(user_id)
    changes: dict[str, str | None] = {}
    if name is not None:
        changes["name"] = parse_name(name)
    if email is not None:
        changes["email"] = parse_email(email)
    if not changes:
        raise ValueError("nothing to update: give name and/or email")
    user = storage.update_user(uid, changes)
    if user is None:
        raise UserNotFound.for_id(uid)
    return user


@app.task(name=f"{_NAME_PREFIX}.delete_user", throws=CLIENT_ERRORS)
def delete_user(user_id: int | str) -> dict[str, int]:
    """Delete the user; UserNotFound if there is none."""
    uid = parse_user_id(user_id)
    if not storage.delete_user(uid):
        raise UserNotFound.for_id(uid)
    return {"deleted": uid}


@app.task(bind=True, name=f"{_NAME_PREFIX}.report", throws=CLIENT_ERRORS, track_started=True)
def report(self: Task, steps: int | str = 5, delay: float | str = 0.5) -> dict[str, Any]:
    """A slow job: ``steps`` steps of ``delay`` seconds, publishing a PROGRESS state
    (``{"current": i, "total": steps}``) after each, then a summary.

    Bounded (at most 100 steps, 5 s each, 50 s in all) so one request cannot hold a worker
    for long, and the waiting route (60 s) always sees the end.
    """
    total = parse_int(steps, "steps", 1, MAX_REPORT_STEPS)
    pause = parse_float(delay, "delay", 0.0, MAX_REPORT_DELAY)
    if total * pause > MAX_REPORT_SECONDS:
        raise ValueError(f"steps * delay must be at most {MAX_REPORT_SECONDS:g} s, "
                         f"got {total} * {pause:g} = {total * pause:g} s")
    started = time.monotonic()
    for current in range(1, total + 1):
        time.sleep(pause)
        if not self.request.called_directly:  # no task id, no one to tell
            self.update_state(state="PROGRESS", meta={"current": current, "total": total})
    return {"users": storage.count_users(), "steps": total,
            "seconds": round(time.monotonic() - started, 3)}
