"""Transport: routers, problem+json errors, strict JSON bodies, offline docs."""
