"""Adapters: the `AdapterPool` of PEFT LoRA folders, their manifest and compatibility checks."""

from .pool import AdapterPool, AdapterRecord, AdapterWeights, LoRAModuleWeights

__all__ = ["AdapterPool", "AdapterRecord", "AdapterWeights", "LoRAModuleWeights"]
