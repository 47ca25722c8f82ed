"""The project's error types (imported by the file readers, the layout mapping, the loaders and the
command line, importing none of them).

Every error class of the package derives from :class:`DeitError` and keeps the builtin base it
had (``CheckpointError`` is a ValueError, ``ModelNotFoundError`` a FileNotFoundError, ...), so
``except ValueError`` still catches what it caught. ``deit.cli`` prints a project error as one
line; see :func:`deit.cli.is_user_error` for the whole rule.
"""


class DeitError(Exception):
    """An error the package raises on purpose, with a message written for the user (a bad file,
    setting or state of a run), not a bug."""


class CheckpointError(DeitError, ValueError):
    """A checkpoint file that cannot be read, is unsafe, or does not fit the model."""
