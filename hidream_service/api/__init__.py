"""The HTTP API: create_app() and one thin module per dialect."""

from hidream_service.api.app import create_app

__all__ = ["create_app"]
