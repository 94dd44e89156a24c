"""Training data: the book's corpora and its sliding-window loader."""

from keras_gpt_scratch.data.corpora import (
    TINY_SHAKESPEARE_SPLITS,
    load_text_files,
    load_the_verdict,
    load_tiny_shakespeare,
)
from keras_gpt_scratch.data.sliding_window import create_dataset, num_windows

__all__ = [
    "TINY_SHAKESPEARE_SPLITS",
    "create_dataset",
    "load_text_files",
    "load_the_verdict",
    "load_tiny_shakespeare",
    "num_windows",
]
