"""Dates and times in text columns: which layout a column writes them in, reading them as instants, and the
numeric features a date becomes.

Pure pyarrow + numpy. A layout is a named family of strptime formats tried in order (a column may mix dates and
date-times); values are normalised first (surrounding spaces, the ISO 'T', fractional seconds, 'Z' and '+hh:mm'
zones), so that one family reads every spelling of its form. Times with a zone are converted to UTC; times without
one are taken as written.
"""

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

_TIMES = ("%H:%M:%S", "%H:%M")


def _with_times(*dates: str) -> tuple[str, ...]:
    return tuple(f"{d} {t}" for d in dates for t in _TIMES) + dates


@dataclass(frozen=True)
class Layout:
    name: str
    example: str  # how the layout is shown in messages: "YYYY-MM-DD"
    start: re.Pattern[str]  # what a value of the layout starts with (a cheap test before any parsing)
    formats: tuple[str, ...]


_NUMERIC_DMY = re.compile(r"^\d{1,2}[-/.]\d{1,2}[-/.]\d{4}")
# In this order: where two layouts read every value equally well, the first is chosen.
LAYOUTS: dict[str, Layout] = {layout.name: layout for layout in (
    Layout("iso", "YYYY-MM-DD", re.compile(r"^\d{4}-\d{1,2}-\d{1,2}"), _with_times("%Y-%m-%d")),
    Layout("ymd_slash", "YYYY/MM/DD", re.compile(r"^\d{4}/\d{1,2}/\d{1,2}"), _with_times("%Y/%m/%d")),
    Layout("mdy", "MM/DD/YYYY (or MM-DD-YYYY)", _NUMERIC_DMY, _with_times("%m/%d/%Y", "%m-%d-%Y")),
    Layout("dmy", "DD/MM/YYYY (or DD.MM.YYYY, DD-MM-YYYY)", _NUMERIC_DMY,
           _with_times("%d/%m/%Y", "%d.%m.%Y", "%d-%m-%Y")),
    Layout("d_mon_y", "DD Mon YYYY", re.compile(r"^\d{1,2}[- ][A-Za-z]{3,9}[- ]\d{4}"),
           _with_times("%d-%b-%Y", "%d %b %Y", "%d %B %Y", "%d-%B-%Y")),
    Layout("mon_d_y", "Mon DD, YYYY", re.compile(r"^[A-Za-z]{3,9} \d{1,2},? \d{4}"),
           _with_times("%b %d, %Y", "%B %d, %Y", "%b %d %Y", "%B %d %Y")),
)}
# Where both read every value (01/02/2012), a column is ambiguous; it is read month first, as most software does,
# and the data set says so.
AMBIGUOUS = ("mdy", "dmy")
# A column is a date column when at least this share of its present values read as dates in one layout (the rest
# become missing values, and the data set says how many).
MIN_PARSED = 0.98
SAMPLE = 2000  # values the detection tries every layout on, before the whole column is read in the chosen one

_LOOKS_LIKE_DATE = re.compile(r"^\s*(\d{1,4}[-/.]\d{1,2}[-/.]\d{1,4}|\d{1,2}[- ][A-Za-z]{3,9}[- ]\d|[A-Za-z]{3,9} \d)")


def normalise(strings: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """One spelling per instant: trimmed, ' ' for the ISO 'T', no fractional seconds, zones as +hhmm."""
    s = pc.utf8_trim_whitespace(strings)
    s = pc.replace_substring_regex(s, r"^(\d{4}-\d{1,2}-\d{1,2})T", r"\1 ")
    s = pc.replace_substring_regex(s, r"(\d{1,2}:\d{2}:\d{2})[.,]\d+", r"\1")
    s = pc.replace_substring_regex(s, r"\s*(Z|UTC|GMT)$", "+0000")
    s = pc.replace_substring_regex(s, r"\s*([+-]\d{2}):?(\d{2})$", r"\1\2")
    return s


def _parse_normalised(s: pa.Array | pa.ChunkedArray, layout: Layout) -> NDArray[np.float64]:
    """Seconds since 1970-01-01 UTC, NaN where no format of the layout reads the value."""
    out = np.full(len(s), np.nan)
    timed = pc.any(pc.match_substring(s, ":")).as_py()
    zones = (False, True) if pc.any(pc.match_substring_regex(s, r":\d{2}[+-]\d{4}$")).as_py() else (False,)
    for fmt in layout.formats:
        if not timed and "%H" in fmt:
            continue
        for zoned in zones:
            todo = np.isnan(out)
            if not todo.any():
                return out
            parsed = pc.strptime(s, format=fmt + ("%z" if zoned else ""), unit="s", error_is_null=True)
            seconds = pc.cast(pc.cast(parsed, pa.timestamp("s")), pa.int64()).to_numpy(zero_copy_only=False)
            seconds = np.asarray(seconds, dtype=np.float64)  # nulls arrive as NaN
            out = np.where(todo & ~np.isnan(seconds), seconds, out)
    return out


def parse(strings: pa.Array | pa.ChunkedArray, layout: str) -> NDArray[np.float64]:
    """Seconds since 1970-01-01 UTC for each value read in `layout` (or, failing that, as ISO 8601, which no
    layout reads otherwise); NaN where missing or unreadable."""
    if pa.types.is_null(strings.type):
        return np.full(len(strings), np.nan)
    return _parse_or_iso(normalise(pc.cast(strings, pa.string())), layout)


def _parse_or_iso(normalised: pa.Array | pa.ChunkedArray, layout: str) -> NDArray[np.float64]:
    seconds = _parse_normalised(normalised, LAYOUTS[layout])
    todo = np.isnan(seconds)
    if layout != "iso" and todo.any():
        iso = _parse_normalised(pc.filter(normalised, pa.array(todo)), LAYOUTS["iso"])
        seconds[todo] = iso
    return seconds


@dataclass(frozen=True)
class Detected:
    layout: str
    parsed: int  # present values read as dates
    present: int
    ambiguous: bool  # day first and month first both read every sampled value
    seconds: NDArray[np.float64]  # each present value as read (NaN: not a date)


def detect(strings: pa.ChunkedArray) -> Detected | None:
    """The layout a text column writes its dates in, or None when it is no date column."""
    present = strings.drop_null()
    if len(present) == 0:
        return None
    sample = present.slice(0, SAMPLE)
    first = sample[0].as_py()
    if not isinstance(first, str) or not _LOOKS_LIKE_DATE.match(first):
        return None
    sample = normalise(sample)
    tried = {name: _parse_normalised(sample, layout) for name, layout in LAYOUTS.items()
             if layout.start.match(first.strip())}
    reads = {name: int(np.count_nonzero(~np.isnan(seconds))) for name, seconds in tried.items()}
    if not reads:
        return None
    best = max(reads, key=lambda name: reads[name])  # the first of equals: month first before day first
    if reads[best] < MIN_PARSED * len(sample):
        return None
    ambiguous = best in AMBIGUOUS and all(reads.get(name) == reads[best] for name in AMBIGUOUS)
    if len(present) > len(sample):
        whole = parse(present, best)
    elif best == "iso" or reads[best] == len(sample):
        whole = tried[best]
    else:
        whole = _parse_or_iso(sample, best)
    parsed = int(np.count_nonzero(~np.isnan(whole)))
    if parsed < MIN_PARSED * len(present):
        return None
    return Detected(layout=best, parsed=parsed, present=len(present), ambiguous=ambiguous, seconds=whole)


# ---------------------------------------------------------------- features

# Calendar parts a date becomes, with the period of the cyclical (sin, cos) pair each also gets.
PERIODS = {"month": 12.0, "day": 31.0, "weekday": 7.0, "yearday": 366.0, "hour": 24.0}
PARTS = ("elapsed", "year", "month", "day", "weekday", "yearday", "hour")


def calendar(seconds: NDArray[np.float64]) -> dict[str, NDArray[np.float64]]:
    """Each part of PARTS for each instant (NaN stays NaN): elapsed days since 1970, year, month 1-12, day of
    month 1-31, weekday 0 (Monday)-6, day of year 1-366, hour with minutes as a fraction."""
    present = ~np.isnan(seconds)
    whole = np.where(present, seconds, 0).astype("int64")
    stamps = whole.astype("datetime64[s]")
    days = stamps.astype("datetime64[D]")
    years = days.astype("datetime64[Y]")
    months = days.astype("datetime64[M]")
    parts = {
        "elapsed": whole / 86400.0,
        "year": years.astype(np.int64) + 1970.0,
        "month": (months.astype(np.int64) % 12) + 1.0,
        "day": (days - months).astype(np.int64) + 1.0,
        "weekday": (days.astype(np.int64) + 3) % 7 + 0.0,  # 1970-01-01 was a Thursday
        "yearday": (days - years).astype(np.int64) + 1.0,
        "hour": (stamps - days).astype(np.int64) / 3600.0,
    }
    return {name: np.where(present, values, np.nan).astype(np.float64) for name, values in parts.items()}


# The finest spacing of dates (days between neighbours, typically) at which each calendar part says something: the
# weekday of quarterly dates, or the day of month of monthly ones, is noise that a small table's network would fit.
PART_SPACING_DAYS = {"hour": 1.0, "weekday": 7.0, "day": 28.0, "yearday": 28.0, "month": 365.0}


def parts_for(seconds: NDArray[np.float64]) -> list[str]:
    """The calendar parts worth an input for these instants: by the median gap between distinct neighbours."""
    distinct = np.unique(seconds[~np.isnan(seconds)])
    gap = float(np.median(np.diff(distinct))) / 86400.0 if distinct.size > 1 else 0.0
    return [p for p in PARTS if gap < PART_SPACING_DAYS.get(p, math.inf)]


def inputs(parts: list[str]) -> list[tuple[str, str]]:
    """The network inputs a date's kept parts become, in order: (part, 'value' | 'sin' | 'cos')."""
    out: list[tuple[str, str]] = []
    for part in parts:
        out.append((part, "value"))
        if part in PERIODS:
            out.extend([(part, "sin"), (part, "cos")])
    return out


def input_values(parts: dict[str, NDArray[np.float64]], part: str, form: str) -> NDArray[np.float64]:
    values = parts[part]
    if form == "value":
        return values
    angle = 2 * math.pi * values / PERIODS[part]
    result: NDArray[np.float64] = np.sin(angle) if form == "sin" else np.cos(angle)
    return result


def describe(layout: str) -> str:
    return LAYOUTS[layout].example


def example_value(layout: str) -> Any:
    """A value of the layout, for messages that say what would be accepted."""
    return {"iso": "2012-01-31", "ymd_slash": "2012/01/31", "dmy": "31/01/2012", "mdy": "01/31/2012",
            "d_mon_y": "31 Jan 2012", "mon_d_y": "Jan 31, 2012"}[layout]
