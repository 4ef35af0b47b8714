"""Dialects: how each vendor's clients name models, inputs, states and outputs.

Pure translation with no web framework: parse a client's input into the canonical (fal-shaped)
input, and render a canonical job the way that client expects it. Routes live in api/; webhook
bodies are rendered from here too, inside the transaction that ends a job.
"""
