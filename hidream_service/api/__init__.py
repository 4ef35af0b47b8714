"""HTTP plumbing every dialect's routes share (submission, auth, errors, files, uploads) and the
service's own routes (catalogue, request view, webhook deliveries, playground). The app itself is
composed in hidream_service/server.py."""
