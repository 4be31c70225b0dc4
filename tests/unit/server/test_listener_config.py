"""A listener's configuration as one value (server/context.py ListenerConfig): a reload puts
every field of it in place through `SessionContext.configure`, typed, never by name."""

from __future__ import annotations

from dataclasses import fields
from typing import TYPE_CHECKING, Any, cast, get_type_hints

from hato.model import Role, SystemClock
from hato.server.context import ListenerConfig, ListenerState, SessionContext
from hato.smtp import ServerSettings

if TYPE_CHECKING:
    from hato.intake.context import Recipients
    from hato.queue import QueueStore


def test_every_field_is_the_session_context_field_of_that_name_and_type() -> None:
    context = get_type_hints(SessionContext)
    config = get_type_hints(ListenerConfig)
    misnamed = sorted(name for name in config if name not in context)
    assert misnamed == []
    assert {name: context[name] for name in config} == config


def test_configure_puts_every_field_in_place() -> None:
    ctx = SessionContext(
        role=Role.MX,
        settings=ServerSettings(hostname="old.example"),
        queue=cast("QueueStore", object()),
        resolver=cast("Recipients", object()),
        clock=SystemClock(),
        idle_timeout=1.0,
        session_timeout=2.0,
        listener=ListenerState("mx@127.0.0.1:25", max_connections=1, max_per_ip=1),
    )
    # One new object per field: a field that `configure` forgets keeps the old value.
    values: dict[str, Any] = {f.name: object() for f in fields(ListenerConfig)}
    ctx.configure(ListenerConfig(**values))
    forgotten = sorted(name for name, value in values.items() if getattr(ctx, name) is not value)
    assert forgotten == []
