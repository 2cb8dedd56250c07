"""picogpt2: GPT-2 inference in plain, vectorised NumPy."""

from picogpt2.model import GPT2, load_model

__all__ = ["GPT2", "load_model"]
