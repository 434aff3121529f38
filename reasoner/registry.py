"""One registry per extension point (reward functions, advantage estimators, loss aggregations, tasks...).

An unknown name fails with the list of valid ones; registering a name twice fails.

>>> SHAPES = Registry("shape")
>>> @SHAPES.register("square")
... def square(x):
...     return x * x
>>> SHAPES.get("square")(3)
9
>>> SHAPES.get("cube")
Traceback (most recent call last):
...
KeyError: "unknown shape 'cube'; valid: square"
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = item
            return item

        return add

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(f"unknown {self.kind} {name!r}; valid: {', '.join(sorted(self._items))}") from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))
