"""One node of one resource: the loop's state, its roles and their pipelines."""
