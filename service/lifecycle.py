"""What the server tells the app about itself, through the ASGI lifespan state."""

from dataclasses import dataclass


@dataclass
class Lifecycle:
    """Put in the lifespan state by the server `gradiag serve` runs (requests read it as
    `request.state.lifecycle`); absent under other servers and in tests' clients."""

    draining: bool = False  # a shutdown signal came: /readyz answers 503, requests are served
