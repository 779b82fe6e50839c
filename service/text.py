"""Text for people: a long value cut to a short prefix with an ellipsis."""


def shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[: limit - 1]}…"
