"""Endpoints: their input schemas (pydantic, importable without torch) and lazily loaded runners."""
