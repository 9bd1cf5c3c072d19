"""Subcommands of the ``attnkit`` CLI, one module each (see :mod:`attnkit.cli`)."""
