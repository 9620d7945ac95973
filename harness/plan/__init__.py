"""The plan: a matrix (YAML) read into typed records and expanded into the boots of a run, each with
its runs (limit, user) and cases (`matrix`). Pure."""
