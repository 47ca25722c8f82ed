"""Errors shared by the file readers, the layout mapping and the loaders (imported by all of them,
importing none of them)."""


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read, is unsafe, or does not fit the model."""
