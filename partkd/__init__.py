"""partkd: part-level knowledge distillation from high-quality to low-quality skeletons."""

__version__ = "0.2.0"
