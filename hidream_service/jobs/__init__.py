"""Jobs: the canonical model, the SQLite store, the service that moves jobs between states, workers."""
