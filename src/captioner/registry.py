"""Build-by-name registries for encoders and decoders."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Generic, TypeVar

from .errors import InvalidInputError, UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps a name to a builder and the config dataclass that builder takes.

    ``register(name, config_cls)`` is a decorator; ``create(name, **options)`` builds the
    config from ``options`` (unknown keys are an error) and calls the builder with it.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, tuple[Callable[..., T], type]] = {}

    def register(self, name: str, config_cls: type) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def decorator(builder: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = (builder, config_cls)
            return builder

        return decorator

    def names(self) -> list[str]:
        return sorted(self._entries)

    def builder(self, name: str) -> Callable[..., T]:
        return self._lookup(name)[0]

    def config_class(self, name: str) -> type:
        return self._lookup(name)[1]

    def make_config(self, name: str, **options: Any):
        config_cls = self.config_class(name)
        return build_dataclass(config_cls, options, f"{self.kind} {name!r}")

    def create(self, name: str, config=None, **options: Any) -> T:
        builder, config_cls = self._lookup(name)
        if config is None:
            config = self.make_config(name, **options)
        elif options:
            config = dataclasses.replace(config, **options)
        return builder(config)

    def _lookup(self, name: str):
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; registered: {', '.join(self.names()) or 'none'}"
            ) from None


def build_dataclass(config_cls: type, options: dict[str, Any], what: str):
    """Instantiate ``config_cls`` from a dict, naming unknown keys in the error."""
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise InvalidInputError(
            f"unknown option(s) for {what}: {', '.join(unknown)}; valid options: {', '.join(sorted(known))}"
        )
    return config_cls(**options)
