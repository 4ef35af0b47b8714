"""The SQL database of jobs, logs and webhooks: SQLite in the data dir, or Postgres shared by nodes."""
