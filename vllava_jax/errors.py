"""Exceptions a user can cause. Each message names the file, key or shape at fault."""


class VllavaError(Exception):
    """Base class of every error this package raises for bad user input."""


class ConfigError(VllavaError):
    """A config.json or config file that we cannot read as a Video-LLaVA model."""


class CheckpointError(VllavaError):
    """A checkpoint directory with missing, unexpected or mis-shaped tensors."""


class InputError(VllavaError):
    """Model inputs whose shapes or placeholder counts do not fit together."""


class DataError(VllavaError):
    """Data we cannot read (training annotations and media, eval sets): the message names the file,
    the entry and the reason."""


class UsageError(VllavaError):
    """A command-line flag that is missing, unknown or out of range (exit code 2)."""
