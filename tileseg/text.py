"""Words for counts in what users read: ``1 chunk``, ``2 chunks``."""

from __future__ import annotations


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` and ``noun``, plural unless ``n`` is 1 (``class`` -> ``classes``; ``plural`` for
    any other form).

    Examples
    --------
    >>> counted(1, "chunk"), counted(3, "chunk"), counted(2, "class"), counted(2, "epoch")
    ('1 chunk', '3 chunks', '2 classes', '2 epochs')
    """
    return f"{n} {noun if n == 1 else plural or plural_of(noun)}"


def plural_of(noun: str) -> str:
    """``chunk`` -> ``chunks``, ``class`` -> ``classes``, ``epoch`` -> ``epochs`` (a noun in
    ``-ch`` said ``-tch``, such as ``batch``, takes ``plural``)."""
    return noun + ("es" if noun.endswith(("s", "x", "sh")) else "s")
