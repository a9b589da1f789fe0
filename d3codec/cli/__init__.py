"""The ``d3`` command-line app (installed as the package ``d3codec.cli``)."""
