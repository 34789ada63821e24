"""Exception types of cad3d. Messages name the file or argument and the cause."""


class Cad3dError(Exception):
    """Base class: a failure the CLI reports as one line on stderr (exit code 1)."""


class DatasetError(Cad3dError):
    """Missing, corrupt or inconsistent training data."""


class CheckpointError(Cad3dError):
    """A checkpoint that cannot be trusted or restored (corrupt, truncated, tampered, foreign)."""


class ConversionError(Cad3dError):
    """A drawing that cannot be converted."""


class EvaluationError(Cad3dError):
    """An evaluation that cannot run, or a training log that cannot be read or plotted."""
