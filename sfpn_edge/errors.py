"""Exceptions that the CLI turns into a one-line message and exit code 2."""


class SfpnError(Exception):
    """Base class for every error caused by the user's input or environment."""


class ModelError(SfpnError):
    """A model file or directory is missing, corrupt, hostile or of the wrong kind."""


class ImageError(SfpnError):
    """An image cannot be read or is not usable."""
