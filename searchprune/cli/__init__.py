"""The ``searchprune`` command line: one module per command group (study, model)."""
