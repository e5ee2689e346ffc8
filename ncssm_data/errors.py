"""The one error type of ncssm_data."""


class ClipError(ValueError):
    """Bad clip data or a bad observation layout; the message is one sentence naming the file or key."""
