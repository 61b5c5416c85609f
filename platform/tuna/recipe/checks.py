"""The value check every recipe section runs in ``__post_init__``; the loader prefixes the section path."""

from __future__ import annotations

from tuna.errors import ConfigError


class KeyCheckError(ConfigError):
    """A value check inside a section; :func:`tuna.recipe.loader.build` prefixes the dotted section path."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.detail = message


def require(ok: bool, key: str, message: str) -> None:
    """Raise :class:`KeyCheckError` for ``key`` with ``message`` unless ``ok``."""
    if not ok:
        raise KeyCheckError(key, message)
