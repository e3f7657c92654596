"""Errors edge-spec raises on bad input. The CLI prints them as one line and exits non-zero."""


class EdgeSpecError(Exception):
    """Base class: a problem the user can fix, with a message that says how."""


class ConfigError(EdgeSpecError, ValueError):
    """An invalid option or setting (temperature, thresholds, block lengths, ...)."""


class ModelError(EdgeSpecError):
    """A model file is missing, is not GGUF, is corrupt, or llama.cpp cannot load it."""


class IncompatibleTiersError(EdgeSpecError):
    """Two tiers cannot be stacked: their vocabularies or special tokens differ."""


class ContextOverflowError(EdgeSpecError):
    """The prompt (plus what must be generated) does not fit in the context window."""
