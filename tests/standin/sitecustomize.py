import standin_finder  # noqa: F401  (test-only stand-in for elastic_cli.data.loader; see standin_finder.py)
