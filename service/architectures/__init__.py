"""Specs to torch modules: activations, model kinds, seeded initialisation. No web framework."""
