"""Text helpers shared by the repository modules."""
from __future__ import annotations

__all__ = ["clip_text"]


def clip_text(value: str | None, length: int) -> str | None:
    """Cut over-long peer text to its column (tolerant decoding).

    Parameters
    ----------
    value: str | None
        Text received from a peer (an AE title, a certificate subject...).
    length: int
        The column's length.

    Returns
    -------
    str | None
        `value`, cut to `length` characters; ``None`` stays ``None``.

    Examples
    --------
    >>> clip_text("ABCDEFGHIJKLMNOPQRS", 16)
    'ABCDEFGHIJKLMNOP'
    >>> clip_text(None, 16) is None
    True
    """
    if value is None or len(value) <= length:
        return value
    return value[:length]
