"""The GPT family used by specsweep: plain PyTorch, no configs, files or logging."""

from models.config import GPTConfig
from models.gpt import GPT

__all__ = ["GPTConfig", "GPT"]
