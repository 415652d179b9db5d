"""Reports over finished runs: the method comparison, tables, charts, the parameter table."""
