"""Custom runtimes ([cerebrium.runtime.custom]): the user's own web server, run and proxied."""
