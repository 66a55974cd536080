"""SCORE: self-supervised correspondence fine-tuning of speech models, on top of s3prl."""

__version__ = "0.1.0"
