"""plmkit: pre-trained transformer language models, from raw text to a small, fast, measured model."""
__version__ = "0.1.0"
