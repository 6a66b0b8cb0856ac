"""Place names as people type them: folded for matching, and ISO country codes checked.

A place is matched by its folded name (`fold`: any case, accents and punctuation ignored), so
`--place "sao paulo"` finds "São Paulo" and `--place "saint etienne"` finds "Saint-Étienne". A query
matches a name when its words appear in the name as whole words: "york" finds "New York", "paris"
does not find "Parisot".
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import asdict, dataclass

from ..errors import BadInputError

# Letters that Unicode does not decompose into a base letter and an accent.
_PLAIN = str.maketrans({"ø": "o", "Ø": "O", "æ": "ae", "Æ": "AE", "œ": "oe", "Œ": "OE", "ł": "l", "Ł": "L",
                        "đ": "d", "Đ": "D", "ð": "d", "Ð": "D", "þ": "th", "Þ": "TH", "ı": "i", "ʻ": "", "’": "",
                        "'": ""})
_WORD = re.compile(r"[^\W_]+")
KEY_SEPARATOR = "|"  # between the folded names of a place's key; `fold` never gives one
# Codes people use that ISO 3166 spells differently.
COUNTRY_ALIASES = {"UK": "GB", "EL": "GR"}


class PlaceError(BadInputError):
    """A place filter that cannot be used (a bad country code, position or radius); the message says why."""


@dataclass(frozen=True)
class Place:
    """Where a photo was taken, as GeoNames names it: the nearest town of 1,000+ people and its areas."""

    city: str | None
    county: str | None  # GeoNames' second-level area (a municipality, a county); None where it has none
    region: str | None  # first-level area: a state, a province, a region
    country: str | None
    country_code: str | None  # ISO 3166-1 alpha-2, upper case

    @property
    def key(self) -> str:
        """The folded names a place filter matches, city to country, in one text (stored in `places.folded`)."""
        return KEY_SEPARATOR.join(fold(name or "") for name in (self.city, self.county, self.region, self.country))

    def to_dict(self) -> dict[str, str | None]:
        return asdict(self)

    def short(self) -> str:
        """"Lisbon, PT": what a table has room for."""
        return ", ".join(part for part in (self.city, self.country_code) if part)

    def areas(self) -> list[str]:
        """The names of the areas around the city, county to country, each once: ["Lisbon", "Portugal"]."""
        parts: list[str] = []
        for name in (self.county, self.region, self.country):
            if name and name not in parts and name != self.city:
                parts.append(name)
        return parts

    def long(self) -> str:
        """"Intendente, Lisbon, Portugal": each name once, city to country."""
        return ", ".join([self.city, *self.areas()] if self.city else self.areas())


def fold(text: str) -> str:
    """`text` for matching: lower case, without accents or punctuation, words separated by one space."""
    decomposed = unicodedata.normalize("NFKD", text.translate(_PLAIN))
    plain = "".join(char for char in decomposed if not unicodedata.combining(char))
    return " ".join(_WORD.findall(plain.casefold()))


def place_query(text: str) -> str:
    """`--place TEXT` folded, or PlaceError when nothing is left of it to match."""
    folded = fold(text)
    if not folded:
        raise PlaceError(f"--place '{text}' has no letters to match; give a city, region or country name, "
                         "e.g. --place lisbon")
    return folded


def key_matches(key: str, query: str) -> bool:
    """Whether a folded `query` names one of the places in a stored key: its words, whole, in one name."""
    return any(f" {query} " in f" {name} " for name in key.split(KEY_SEPARATOR))


def country_code(text: str) -> str:
    """`--country` as an upper-case ISO 3166-1 alpha-2 code ("pt" -> "PT"), or PlaceError saying what to give."""
    code = text.strip().upper()
    if not re.fullmatch(r"[A-Z]{2}", code):
        raise PlaceError(f"--country '{text}' is not a two-letter ISO country code; give e.g. --country PT "
                         "(Portugal), US or GB, or a name with --place, e.g. --place portugal")
    return COUNTRY_ALIASES.get(code, code)
