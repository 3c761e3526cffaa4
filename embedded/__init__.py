"""The embedded default: the API and an in-process worker in one process on SQLite (`labelq
serve --embedded`, `labelq demo`). The one package that imports both `api` and `worker`."""
