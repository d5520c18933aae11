"""Build-by-name registries for encoders and decoders."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Generic, TypeVar

from .errors import InvalidInputError, UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps a name to a builder and the config dataclass that builder takes.

    ``register(name, config_cls)`` is a decorator; ``make_config(name, **options)`` builds
    the config from ``options`` (unknown keys are an error). ``register_route(prefixes, ...)``
    sends a whole family of names (``"timm:<model>"``) to one builder, which is given the
    full name.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, tuple[Callable[..., T], type]] = {}
        self._routes: list[tuple[tuple[str, ...], str, tuple[Callable[..., T], type]]] = []

    def register(self, name: str, config_cls: type) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def decorator(builder: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = (builder, config_cls)
            return builder

        return decorator

    def register_route(self, prefixes: tuple[str, ...], pattern: str, config_cls: type, builder: Callable[..., T]):
        """Every name starting with one of ``prefixes`` builds with ``builder``; ``pattern``
        (``"timm:<model name>"``) is how ``routes()`` shows it."""
        self._routes.append((tuple(prefixes), pattern, (builder, config_cls)))

    def names(self) -> list[str]:
        return sorted(self._entries)

    def routes(self) -> list[str]:
        """The name patterns served by routes, e.g. ``["timm:<model name>"]``."""
        return [pattern for _, pattern, _ in self._routes]

    def builder(self, name: str) -> Callable[..., T]:
        return self._lookup(name)[0]

    def config_class(self, name: str) -> type:
        return self._lookup(name)[1]

    def make_config(self, name: str, **options: Any):
        config_cls = self.config_class(name)
        return build_dataclass(config_cls, options, f"{self.kind} {name!r}")

    def _lookup(self, name: str):
        if name in self._entries:
            return self._entries[name]
        for prefixes, _, entry in self._routes:
            if any(name.startswith(prefix) and len(name) > len(prefix) for prefix in prefixes):
                return entry
        known = self.names() + self.routes()
        raise UnknownNameError(f"unknown {self.kind} {name!r}; registered: {', '.join(known) or 'none'}")


def build_dataclass(config_cls: type, options: dict[str, Any], what: str):
    """Instantiate ``config_cls`` from a dict, naming unknown keys in the error."""
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise InvalidInputError(
            f"unknown option(s) for {what}: {', '.join(unknown)}; valid options: {', '.join(sorted(known))}"
        )
    return config_cls(**options)
