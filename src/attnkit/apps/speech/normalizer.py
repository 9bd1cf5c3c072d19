"""An English text normaliser for word error rates: lower case, titles spelled out
("mr." -> "mister"), numbers as words ("10" -> "ten", "7th" -> "seventh"; a run of five or more
digits without separators, or one with a leading zero, digit by digit, as codes and digit strings
are read: "29340" -> "two nine three four zero"), hyphens and other
punctuation to spaces (apostrophes inside words kept), whitespace collapsed. Reference and
hypothesis go through the same function before ``jiwer`` counts errors."""

from __future__ import annotations

import re

__all__ = ["normalize_english"]

_TITLES = {"mr": "mister", "mrs": "missus", "ms": "miss", "dr": "doctor", "st": "saint", "jr": "junior",
           "sr": "senior", "prof": "professor"}
_SYMBOLS = {"&": " and ", "%": " percent ", "+": " plus ", "@": " at "}


def _number_words(match: re.Match) -> str:
    from num2words import num2words

    digits, suffix = match[1].replace(",", ""), (match[2] or "").lower()
    if digits.isdigit() and digits == match[1] and not suffix and (len(digits) >= 5 or
                                                                    (len(digits) > 1 and digits[0] == "0")):
        return " " + " ".join(num2words(int(d)) for d in digits) + " "
    n = float(digits) if "." in digits else int(digits)
    if suffix in ("st", "nd", "rd", "th") and isinstance(n, int):
        return " " + num2words(n, to="ordinal") + " "
    return " " + num2words(n) + " "


def normalize_english(text: str) -> str:
    """``text`` normalised for scoring, e.g. ``"Go forward 10 meters."`` -> ``"go forward ten meters"``.

    >>> normalize_english("Mr. John Dashwood's ill-disposed, 7th son!")
    "mister john dashwood's ill disposed seventh son"
    """
    s = text.lower()
    s = re.sub(r"\b(" + "|".join(_TITLES) + r")\.", lambda m: _TITLES[m[1]] + " ", s)
    for sym, word in _SYMBOLS.items():
        s = s.replace(sym, word)
    s = re.sub(r"(\d[\d,]*(?:\.\d+)?)(st|nd|rd|th)?\b", _number_words, s)
    s = s.replace("-", " ")  # num2words writes "twenty-one"
    s = re.sub(r"[\u2018\u2019`]", "'", s)
    s = re.sub(r"[^\w\s']", " ", s)  # punctuation
    s = re.sub(r"(?<!\w)'|'(?!\w)", " ", s)  # quotes, not apostrophes inside words
    return " ".join(s.split())
