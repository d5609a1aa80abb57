"""sftlab: supervised fine-tuning (pt, sft, cls) of language models on private data."""

__version__ = "0.1.0"
