"""The encoder's user-facing error type."""


class EncoderError(ValueError):
    """A bad encoder preset/option or an input the encoder cannot take (one line naming what is wrong)."""
