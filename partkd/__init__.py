"""partkd: part-level knowledge distillation from high-quality to low-quality skeletons."""

__version__ = "0.1.0"
