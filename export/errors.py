"""The export's error type."""


class ExportError(ValueError):
    """A model cannot be exported faithfully (the message says why)."""
