"""Use cases: each owns its transaction. The API, the worker and the CLI call these; they call
`db` for data and `labelq` for the domain."""
