"""Houlsby bottleneck adapters (Houlsby et al., 2019), our own implementation."""

from peftops.methods.adapter.config import AdapterConfig
from peftops.methods.adapter.method import AdapterMethod, Bottleneck

__all__ = ["AdapterConfig", "AdapterMethod", "Bottleneck"]
