"""PEFT methods, one package each, registered by name (``get_method('lora')``).

Each package has ``config.py`` (a validated, frozen config model) and the code that applies it.
"""

from __future__ import annotations

from pathlib import Path
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


PEFT_TYPES = {"LORA": "lora", "PROMPT_TUNING": "prompt", "PREFIX_TUNING": "prefix", "HOULSBY_ADAPTER": "adapter",
              "BITFIT": "bitfit"}


def load_adapter(model: Any, adapter_dir: str | Path) -> Any:
    """Load a saved or exported adapter of any method onto a freshly loaded base ``model`` (the
    loader for the kinds peft cannot read: Houlsby adapters and BitFit). The method comes from the
    folder's method record, else from ``adapter_config.json``'s ``peft_type``."""
    import json

    adapter_dir = Path(adapter_dir)
    if (adapter_dir / METHOD_FILE).exists():
        name = read_method_file(adapter_dir)["method"]
    else:
        cfg_file = adapter_dir / "adapter_config.json"
        peft_type = json.loads(cfg_file.read_text()).get("peft_type") if cfg_file.exists() else None
        if peft_type not in PEFT_TYPES:
            raise ConfigError("adapter", f"{adapter_dir}: neither {METHOD_FILE} nor a known peft_type "
                              f"({', '.join(PEFT_TYPES)}) says which method saved it")
        name = PEFT_TYPES[peft_type]
    return get_method(name).load(model, adapter_dir)


__all__ = ["PEFT_TYPES", "load_adapter", "METHOD_FILE", "Method", "MethodConfig", "available_methods", "get_method", "make_config",
           "read_method_file", "register"]
