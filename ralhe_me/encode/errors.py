"""The encoder's error, apart so that the encoder's parts raise it without importing the encoder."""


class EncodeError(ValueError):
    """The model cannot be encoded with these settings; the message says why."""
