"""The `hidream` subcommands besides `serve`: run, jobs, doctor."""
