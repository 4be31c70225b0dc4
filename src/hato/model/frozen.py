"""A cheaper `__init__` for the frozen values made once or more per message (issue 15).

A `@dataclass(frozen=True, slots=True)` stores each field in its `__init__` by
`object.__setattr__(self, name, value)` (its own `__setattr__` refuses every assignment):
a global look-up, an attribute look-up and a generic attribute set by name, per field. A
value of six to eight fields costs ~1 µs to make on a loaded machine, twice what storing
through each slot's own descriptor (`Cls.field.__set__(self, value)`) costs, and a
one-recipient message makes about ten of them (events, policy facts, the trace and queue
values). `quick_init` replaces the generated `__init__` by one that does that: the same
parameters (order, defaults, default factories, keyword-only fields), the same stored
values; the class stays the dataclass it was (frozen, its equality, hash, repr, `replace`
and `match` patterns, and the type mypy sees).

Stdlib values only (model).
"""

from __future__ import annotations

import dataclasses
import inspect
import types
from typing import Any, TypeVar, cast

_T = TypeVar("_T")
_FACTORY = object()  # "no value given": call the field's default factory


def quick_init(cls: type[_T]) -> type[_T]:
    """Give the frozen slots dataclass `cls` an `__init__` that stores through its slots.

    Apply it above `@dataclass(frozen=True, slots=True)`. A class this does not fit (not a
    frozen slots dataclass, an `InitVar` or a `__post_init__`) is refused at import.
    """
    params = getattr(cls, "__dataclass_params__", None)
    slots = cls.__dict__.get("__slots__")
    if params is None or not params.frozen or slots is None:
        raise TypeError(f"quick_init: {cls.__qualname__} is not a frozen slots dataclass")
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"quick_init: {cls.__qualname__} has __post_init__")
    env: dict[str, Any] = {"_FACTORY": _FACTORY}
    positional: list[str] = []
    keyword: list[str] = []
    body: list[str] = []
    for n, f in enumerate(dataclasses.fields(cast(Any, cls))):
        slot = inspect.getattr_static(cls, f.name)  # the slot's descriptor, a base's too
        if not isinstance(slot, types.MemberDescriptorType):
            raise TypeError(f"quick_init: {cls.__qualname__}.{f.name} is not a slot")
        env[f"_set{n}"] = slot.__set__
        value = f.name
        if f.default is not dataclasses.MISSING:
            env[f"_default{n}"] = f.default
            param = f"{f.name}=_default{n}"
            value = f"_default{n}"
        elif f.default_factory is not dataclasses.MISSING:
            env[f"_factory{n}"] = f.default_factory
            param = f"{f.name}=_FACTORY"
            if f.init:
                body.append(f"if {f.name} is _FACTORY: {f.name} = _factory{n}()")
            else:
                value = f"_factory{n}()"
        else:
            param = f.name
        if f.init:
            (keyword if f.kw_only else positional).append(param)
            value = f.name
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            continue  # not set by __init__, as the dataclass's own leaves it
        body.append(f"_set{n}(self, {value})")
    signature = ", ".join(["self", *positional, *(["*", *keyword] if keyword else [])])
    source = f"def __init__({signature}) -> None:\n" + "".join(
        f"    {line}\n" for line in body or ["pass"]
    )
    # Our own text, built from the class's field names; the file name tells profiles apart
    # (every dataclass's own __init__ is "<string>").
    exec(compile(source, f"<quick_init {cls.__qualname__}>", "exec"), env)
    init = env["__init__"]
    if _shape(init) != _shape(cls.__init__):  # an InitVar, or a dataclass feature unknown here
        raise TypeError(f"quick_init: {cls.__qualname__}'s parameters differ from the dataclass's")
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    init.__doc__ = cls.__init__.__doc__
    type.__setattr__(cls, "__init__", init)
    return cls


def _shape(init: Any) -> list[tuple[str, object]]:
    """The parameters' names and kinds."""
    return [(p.name, p.kind) for p in inspect.signature(init).parameters.values()]
