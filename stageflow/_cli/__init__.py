"""Implementation of the ``stageflow`` command line (public entry: :mod:`stageflow.cli`)."""
