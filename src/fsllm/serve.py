"""The former module of ``fsllm serve``, now the package :mod:`fsllm.serving`; its names stay importable here
(``uvicorn --factory fsllm.serve:app_from_env`` keeps working)."""

from .serving import *  # noqa: F401,F403
from .serving import __all__  # noqa: F401
