"""edge-spec: speculative decoding for local GGUF models on llama.cpp.

`from edge_spec import Pyramid` is the Python API (edge_spec.api); it is imported on first use, so the
command line starts without loading llama.cpp.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["LoadOptions", "Pyramid", "Result"]

if TYPE_CHECKING:
    from edge_spec.api import LoadOptions, Pyramid, Result


def __getattr__(name: str) -> Any:
    if name in __all__:
        from edge_spec import api

        return getattr(api, name)
    raise AttributeError(f"module 'edge_spec' has no attribute {name!r}")
