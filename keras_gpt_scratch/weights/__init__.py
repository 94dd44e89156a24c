"""Real GPT-2 weights: read both published formats, convert, export back.

Most users never import this package: `GPTCausalLM.from_preset("gpt2_124m")`,
`from_preset("hf://openai-community/gpt2")`, `from_preset(folder)` and
`GPTCausalLM.export_to_transformers(path)` use it. Directly:

```python
from keras_gpt_scratch import weights

with weights.read_gpt2_checkpoint("path/to/124M") as ckpt:  # OpenAI's folder
    lm = weights.from_gpt2_checkpoint(keras_gpt_scratch.GPTCausalLM, ckpt)
weights.export_to_transformers(lm, "gpt2-hf")  # GPT2LMHeadModel loads it
```
"""

from keras_gpt_scratch.weights.config import CheckpointError, DownloadError, GPT2Config
from keras_gpt_scratch.weights.convert import (
    backbone_from_checkpoint,
    backbone_tensors,
    from_gpt2_checkpoint,
    load_checkpoint_weights,
)
from keras_gpt_scratch.weights.export import (
    export_backbone,
    export_to_transformers,
    export_tokenizer,
    write_openai_checkpoint,
    write_tokenizer_files,
    write_transformers_checkpoint,
)
from keras_gpt_scratch.weights.loading import (
    builtin_preset_dir,
    ensure_builtin_preset,
    from_builtin_preset,
)
from keras_gpt_scratch.weights.readers import (
    GPT2Checkpoint,
    checkpoint_format,
    is_gpt2_checkpoint,
    read_gpt2_checkpoint,
)

__all__ = [
    "CheckpointError",
    "DownloadError",
    "GPT2Checkpoint",
    "GPT2Config",
    "backbone_from_checkpoint",
    "backbone_tensors",
    "builtin_preset_dir",
    "checkpoint_format",
    "ensure_builtin_preset",
    "export_backbone",
    "export_to_transformers",
    "export_tokenizer",
    "from_builtin_preset",
    "from_gpt2_checkpoint",
    "is_gpt2_checkpoint",
    "load_checkpoint_weights",
    "read_gpt2_checkpoint",
    "write_openai_checkpoint",
    "write_tokenizer_files",
    "write_transformers_checkpoint",
]
