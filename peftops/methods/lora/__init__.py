"""LoRA (Hu et al., 2021) through peft, with peft's DoRA and rsLoRA switches."""

from peftops.methods.lora.config import LoraMethodConfig
from peftops.methods.lora.method import LoraMethod

__all__ = ["LoraMethod", "LoraMethodConfig"]
