"""Weights and pipelines. Everything that imports torch lives here and is only imported by workers."""
