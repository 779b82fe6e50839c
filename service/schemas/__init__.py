"""Wire format: request and report models. Pydantic only, no torch work, no web framework."""
