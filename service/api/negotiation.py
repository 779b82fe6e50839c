"""Content negotiation (RFC 9110 §12.5.1): which of the media types a route offers the
`Accept` header prefers."""

from collections.abc import Sequence

JSON, SVG, PNG = "application/json", "image/svg+xml", "image/png"
REPORT_TYPES = (JSON, SVG, PNG)  # offered in this order: on a tie, JSON


def _ranges(accept: str) -> list[tuple[str, str, float]]:
    """(type, subtype, q) of each well-formed media range; a malformed one is skipped."""
    ranges = []
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        kind, slash, subtype = media.lower().partition("/")
        if not slash or not kind or not subtype or (kind == "*" and subtype != "*"):
            continue
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = -1.0
                break  # what follows q are accept-extensions
        if 0.0 <= q <= 1.0:
            ranges.append((kind, subtype, q))
    return ranges


def _quality(offer: str, ranges: list[tuple[str, str, float]]) -> float:
    """The q of the most specific range that matches `offer`; 0 where none does."""
    kind, _, subtype = offer.partition("/")
    best, specificity = 0.0, -1
    for range_kind, range_subtype, q in ranges:
        if range_kind == kind and range_subtype == subtype:
            rank = 2
        elif range_kind == kind and range_subtype == "*":
            rank = 1
        elif range_kind == "*":
            rank = 0
        else:
            continue
        if rank > specificity:
            best, specificity = q, rank
    return best


def choose(accept: str | None, offers: Sequence[str] = REPORT_TYPES) -> str | None:
    """The offer the client prefers most (the first offer on a tie, and without a header or
    an empty one); None when it accepts none of them."""
    if accept is None or not accept.strip():
        return offers[0]
    ranges = _ranges(accept)
    if not ranges:  # nothing parseable: as if there were no header
        return offers[0]
    qualities = [_quality(offer, ranges) for offer in offers]
    best = max(qualities)
    return offers[qualities.index(best)] if best > 0 else None
