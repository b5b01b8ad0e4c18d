"""Typed, path-tracking access to raw configuration values.

``Section`` wraps one JSON object of the config file plus the environment variables that may
override some of its keys. Every accessor knows the dotted field path and the source of the value,
so a bad value always produces a ConfigError that names both. Accessors record which keys they read;
``finish()`` then rejects unknown keys (typos in a config file must not be silently ignored).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from sip4ai.errors import ConfigError


T = TypeVar("T")

DEFAULT = "default"


@dataclass(frozen=True, slots=True)
class Secret:
    """A credential. Its repr and str never reveal the value; use ``.reveal()`` where it is sent."""

    _value: str

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    def __str__(self) -> str:
        return "********"

    def __bool__(self) -> bool:
        return bool(self._value)


class Section:
    """One config object (``openai``, ``outbound``...) with its path, file name and environment."""

    def __init__(
        self,
        data: Mapping[str, Any],
        path: str,
        file_source: str,
        environ: Mapping[str, str],
    ) -> None:
        self._data = data
        self._path = path
        self._file_source = file_source
        self._environ = environ
        self._seen: set[str] = set()

    @property
    def source(self) -> str:
        """The config file's name, for errors about values that came from it."""
        return self._file_source

    def field(self, key: str) -> str:
        return f"{self._path}.{key}" if self._path else key

    def _raw(self, key: str, env: Sequence[str]) -> tuple[Any, str] | None:
        """The value and its source: the first set environment variable wins over the file."""
        self._seen.add(key)
        for name in env:
            value = self._environ.get(name)
            if value is not None and value != "":
                return value, f"env {name}"
        if key in self._data:
            return self._data[key], self._file_source
        return None

    def error(self, key: str, source: str, message: str) -> ConfigError:
        return ConfigError(self.field(key), source, message)

    def str_(
        self,
        key: str,
        default: str | None,
        *,
        env: Sequence[str] = (),
        choices: Sequence[str] | None = None,
        pattern: str | None = None,
        allow_empty: bool = False,
        fold_case: Literal["lower", "upper"] | None = None,
    ) -> str | None:
        found = self._raw(key, env)
        if found is None or found[0] is None:
            return default
        value, source = found
        if not isinstance(value, str):
            raise self.error(key, source, f"expected a string, got {type(value).__name__}")
        value = value.strip()
        if fold_case == "lower":
            value = value.lower()
        elif fold_case == "upper":
            value = value.upper()
        if not value and not allow_empty:
            raise self.error(key, source, "must not be empty")
        if choices is not None and value not in choices:
            raise self.error(key, source, f"{value!r} is not one of {', '.join(choices)}")
        if pattern is not None and not re.fullmatch(pattern, value):
            raise self.error(key, source, f"{value!r} is not valid")
        return value

    def required_str(self, key: str, default: str, **kwargs: Any) -> str:
        value = self.str_(key, default, **kwargs)
        assert value is not None  # a non-None default always yields a str
        return value

    def secret(self, key: str, *, env: Sequence[str] = ()) -> Secret | None:
        value = self.str_(key, None, env=env)
        return Secret(value) if value else None

    def int_(
        self,
        key: str,
        default: int,
        *,
        env: Sequence[str] = (),
        minimum: int | None = None,
        maximum: int | None = None,
    ) -> int:
        found = self._raw(key, env)
        if found is None or found[0] is None:
            return default
        value, source = found
        if isinstance(value, str):
            try:
                value = int(value.strip(), 10)
            except ValueError:
                raise self.error(key, source, f"{value!r} is not an integer") from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, source, f"expected an integer, got {type(value).__name__}")
        if minimum is not None and value < minimum:
            raise self.error(key, source, f"{value} is below the minimum {minimum}")
        if maximum is not None and value > maximum:
            raise self.error(key, source, f"{value} is above the maximum {maximum}")
        return value

    def optional_int(self, key: str, *, env: Sequence[str] = (), **kwargs: Any) -> int | None:
        found = self._raw(key, env)
        if found is None or found[0] is None:
            return None
        return self.int_(key, 0, env=env, **kwargs)

    def float_(
        self,
        key: str,
        default: float,
        *,
        env: Sequence[str] = (),
        minimum: float | None = None,
        maximum: float | None = None,
    ) -> float:
        found = self._raw(key, env)
        if found is None or found[0] is None:
            return default
        value, source = found
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                raise self.error(key, source, f"{value!r} is not a number") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(key, source, f"expected a number, got {type(value).__name__}")
        result = float(value)
        if result != result:  # NaN
            raise self.error(key, source, "must be a number")
        if minimum is not None and result < minimum:
            raise self.error(key, source, f"{result} is below the minimum {minimum}")
        if maximum is not None and result > maximum:
            raise self.error(key, source, f"{result} is above the maximum {maximum}")
        return result

    def bool_(self, key: str, default: bool, *, env: Sequence[str] = ()) -> bool:
        found = self._raw(key, env)
        if found is None or found[0] is None:
            return default
        value, source = found
        if isinstance(value, str):
            lowered = value.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise self.error(key, source, f"{value!r} is not a boolean")
        if not isinstance(value, bool):
            raise self.error(key, source, f"expected true or false, got {type(value).__name__}")
        return value

    def section(self, key: str) -> Section:
        found = self._raw(key, ())
        data: Mapping[str, Any] = {}
        if found is not None and found[0] is not None:
            value, source = found
            if not isinstance(value, Mapping):
                raise self.error(key, source, f"expected an object, got {type(value).__name__}")
            data = value
        return Section(data, self.field(key), self._file_source, self._environ)

    def list_(self, key: str) -> list[Any]:
        found = self._raw(key, ())
        if found is None or found[0] is None:
            return []
        value, source = found
        if not isinstance(value, list):
            raise self.error(key, source, f"expected an array, got {type(value).__name__}")
        return value

    def mapping(self, key: str) -> dict[str, Any] | None:
        found = self._raw(key, ())
        if found is None or found[0] is None:
            return None
        value, source = found
        if not isinstance(value, Mapping):
            raise self.error(key, source, f"expected an object, got {type(value).__name__}")
        return dict(value)

    def item(self, key: str, index: int, value: Any) -> Section:
        """A Section for element ``index`` of the array field ``key`` read with ``list_``."""
        path = f"{self.field(key)}[{index}]"
        if not isinstance(value, Mapping):
            raise ConfigError(path, self._file_source, "expected an object")
        return Section(value, path, self._file_source, self._environ)

    def alias(self, key: str, other: str) -> str:
        """``key`` unless only ``other`` is present in the file (two spellings of one field)."""
        if key not in self._data and other in self._data:
            self._seen.add(key)
            return other
        self._seen.add(other)
        return key

    def finish(self) -> None:
        unknown = sorted(set(self._data) - self._seen)
        if unknown:
            raise ConfigError(self.field(unknown[0]), self._file_source, "unknown key")
