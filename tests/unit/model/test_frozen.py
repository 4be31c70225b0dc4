"""quick_init (model/frozen.py): the same class as the dataclass made, a cheaper __init__."""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import FrozenInstanceError, InitVar, dataclass, field

import pytest

from hato.intake.finish import Submitted
from hato.intake.received import TraceInfo
from hato.model import QueuedMessage, QueuedRecipient, RecipientDsn
from hato.model.frozen import quick_init
from hato.policy.relay import RecipientFacts, SenderFacts
from hato.smtp.events import MailFrom, RcptTo


def _made(quick: bool) -> type:
    """The same value class twice: the dataclass's own __init__, or quick_init's."""

    @dataclass(frozen=True, slots=True)
    class Base:
        first: int

    @dataclass(frozen=True, slots=True)
    class Value(Base):
        second: str
        third: str = "three"
        items: dict[str, int] = field(default_factory=dict, hash=False)
        hidden: int = field(default=7, init=False)
        made: list[int] = field(default_factory=list, init=False, compare=False, hash=False)
        unset: int = field(init=False, compare=False, repr=False, hash=False)
        named: int = field(default=1, kw_only=True)
        factory_named: tuple[int, ...] = field(default_factory=tuple, kw_only=True)

    return quick_init(Value) if quick else Value


def _shape(cls: type) -> list[tuple[str, object]]:
    return [(p.name, p.kind) for p in inspect.signature(vars(cls)["__init__"]).parameters.values()]


CALLS = [
    ((1, "two"), {}),
    ((1, "two", "3"), {"named": 5}),
    ((1, "two", "3", {"a": 1}), {"factory_named": (1, 2)}),
    ((), {"first": 1, "second": "two", "items": {}, "named": 2}),
]


@pytest.mark.parametrize(("args", "kwargs"), CALLS)
def test_the_same_values_as_the_dataclass_own_init(
    args: tuple[object, ...], kwargs: dict[str, object]
) -> None:
    plain, quick = _made(False), _made(True)
    a, b = plain(*args, **kwargs), quick(*args, **kwargs)
    assert repr(a).replace("_made.<locals>.", "") == repr(b).replace("_made.<locals>.", "")
    for f in dataclasses.fields(quick):
        if f.name != "unset":
            assert getattr(a, f.name) == getattr(b, f.name)
    assert not hasattr(b, "unset")  # an init=False field without default stays unset
    assert hash(b) == hash(quick(*args, **kwargs)) and b == quick(*args, **kwargs)


def test_the_same_parameters_and_fresh_defaults_from_each_factory() -> None:
    plain, quick = _made(False), _made(True)
    assert _shape(quick) == _shape(plain)
    one, two = quick(1, "x"), quick(1, "x")
    assert one.items is not two.items and one.made is not two.made
    with pytest.raises(TypeError):
        quick(1)  # "second" is still required
    with pytest.raises(TypeError):
        quick(1, "x", "y", {}, 3)  # "named" is still keyword-only


def test_still_frozen_replaceable_and_matched() -> None:
    quick = _made(True)
    value = quick(1, "two")
    with pytest.raises(FrozenInstanceError):
        value.first = 2
    changed = dataclasses.replace(value, second="other")
    assert changed.second == "other" and changed.first == 1 and value.second == "two"
    match changed:
        case quick(second="other"):  # type: ignore[misc]
            pass
        case _:
            pytest.fail("no match")


def test_a_class_it_does_not_fit_is_refused_at_import() -> None:
    @dataclass(frozen=True)
    class NoSlots:
        a: int

    @dataclass(slots=True)
    class NotFrozen:
        a: int

    @dataclass(frozen=True, slots=True)
    class WithInitVar:
        a: int
        b: InitVar[int]

    @dataclass(frozen=True, slots=True)
    class WithPostInit:
        a: int

        def __post_init__(self) -> None:
            pass

    for cls in (NoSlots, NotFrozen, WithInitVar, WithPostInit, int):
        with pytest.raises(TypeError, match="quick_init"):
            quick_init(cls)


@pytest.mark.parametrize(
    "cls",
    [
        MailFrom,
        RcptTo,
        SenderFacts,
        RecipientFacts,
        RecipientDsn,
        Submitted,
        TraceInfo,
        QueuedMessage,
        QueuedRecipient,
    ],
)
def test_the_values_made_per_message_use_it(cls: type) -> None:
    # issue 15: these are made once or more for every message on the event loop's thread.
    assert vars(cls)["__init__"].__code__.co_filename == f"<quick_init {cls.__qualname__}>"
    assert cls.__dataclass_params__.frozen  # type: ignore[attr-defined]
