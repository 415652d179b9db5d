"""PEFT methods, one package each, registered by name (``get_method('lora')``).

Each package has ``config.py`` (a validated, frozen config model) and the code that applies it.
"""

from __future__ import annotations

from typing import Any

from peftops.config import validate
from peftops.errors import ConfigError
from peftops.methods.base import METHOD_FILE, Method, MethodConfig, read_method_file

_METHODS: dict[str, Method] = {}


def register(method_cls: type) -> type:
    """Class decorator: make a method available under its ``name``."""
    _METHODS[method_cls.name] = method_cls()
    return method_cls


def _ensure_loaded() -> None:
    # Importing the packages registers them; done lazily so `import peftops` stays light.
    from peftops.methods import full, lora  # noqa: F401

    for optional in ("adapter", "bitfit", "prompt", "prefix"):
        try:
            __import__(f"peftops.methods.{optional}")
        except ModuleNotFoundError as err:
            if err.name != f"peftops.methods.{optional}":
                raise


def available_methods() -> list[str]:
    """Names of all registered methods."""
    _ensure_loaded()
    return sorted(_METHODS)


def get_method(name: str) -> Method:
    """The method registered as ``name``; an unknown name lists the known ones."""
    _ensure_loaded()
    if name not in _METHODS:
        raise ConfigError("method", f"unknown method {name!r}; available: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


def make_config(name: str, values: dict[str, Any] | None = None) -> Any:
    """Build and validate method ``name``'s config from a mapping (e.g. a params.yaml block)."""
    method = get_method(name)
    return validate(method.config_cls, values, f"methods.{name}")


__all__ = ["METHOD_FILE", "Method", "MethodConfig", "available_methods", "get_method", "make_config",
           "read_method_file", "register"]
