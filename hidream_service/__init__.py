"""Self-hosted, webhook-driven serving for the HiDream image models."""

__version__ = "0.1.0"
