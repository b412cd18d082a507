"""The file names of a model folder, in a module of their own.

Everything that reads or writes a folder (the model's persistence, the run folder, the trainer)
needs these names; the model's module is not where they can come from without an import cycle
(the run folder sits below the model), so they live here, at the bottom of the import graph.
"""

CONFIG_NAME = "config.json"
HEAD_NAME = "fsllm_head.safetensors"
ADAPTER_DIR = "adapter"
MODEL_CARD_NAME = "README.md"
#: written by fsllm < 0.2 (``fsllm_config.json`` + a top-level adapter); no longer read
LEGACY_CONFIG_NAME = "fsllm_config.json"
