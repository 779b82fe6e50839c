"""Headless Chromium for the pages' tests: Debian's `chromium` driven by Playwright, and a
record of each page's requests, any to a host other than 127.0.0.1 refused."""

from typing import Any
from urllib.parse import urlsplit

LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def local(url: str) -> bool:
    return url.startswith(("data:", "blob:")) or urlsplit(url).hostname == "127.0.0.1"


class Traffic:
    """A page's requests: every one made, those to other hosts (aborted), those that failed
    (a request the page itself aborted, `net::ERR_ABORTED`, is not a failure), and the
    media types answered (the last answer's, by method and URL)."""

    def __init__(self, page: Any) -> None:
        self.requests: list[str] = []
        self.external: list[str] = []
        self.failed: list[str] = []
        self.media_types: dict[str, str] = {}
        page.route("**/*", self._route)
        page.on("request", lambda r: self.requests.append(r.url))
        page.on("requestfailed", self._failed)
        page.on("response", self._answered)

    def _answered(self, response: Any) -> None:
        media_type = response.headers.get("content-type", "")
        self.media_types[f"{response.request.method} {response.url}"] = media_type

    def _route(self, route: Any) -> None:
        if local(route.request.url):
            route.continue_()
        else:
            self.external.append(route.request.url)
            route.abort()

    def _failed(self, request: Any) -> None:
        if request.failure != "net::ERR_ABORTED":
            self.failed.append(f"{request.url}: {request.failure}")

    def check(self) -> None:
        assert not self.external, f"requests to other hosts: {self.external}"
        assert all(local(u) for u in self.requests), self.requests
        assert not self.failed, f"failed requests: {self.failed}"
