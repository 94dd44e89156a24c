"""Tokenizers: GPT-2's byte-pair encoding and the book's word-level one."""

from keras_gpt_scratch.tokenizers.gpt_tokenizer import GPTTokenizer
from keras_gpt_scratch.tokenizers.simple_tokenizer import SimpleTokenizer

__all__ = ["GPTTokenizer", "SimpleTokenizer"]
