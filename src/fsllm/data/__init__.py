"""Data loading for fsllm: file readers, Hugging Face loading and the named-data-set catalogue.

See ``docs/datasets.md`` for the catalogue and the rules each loader applies.
"""

from .catalog import (
    CONLL2003_TAGS,
    HUB_DIR_ENV,
    ONTONOTES5_TAGS,
    list_datasets,
    load_any,
    load_eval_split,
    load_named,
)
from .readers import (
    SCHEMES,
    TaskData,
    convert_to_iob2,
    is_saved_dataset,
    load_hf,
    read_conll,
    read_table,
    split_deterministic,
)

__all__ = [
    "TaskData",
    "read_conll",
    "read_table",
    "load_hf",
    "split_deterministic",
    "convert_to_iob2",
    "is_saved_dataset",
    "SCHEMES",
    "list_datasets",
    "load_named",
    "load_any",
    "load_eval_split",
    "HUB_DIR_ENV",
    "ONTONOTES5_TAGS",
    "CONLL2003_TAGS",
]
