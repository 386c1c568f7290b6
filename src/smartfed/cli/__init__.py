"""The ``smartfed`` command line (the only place that prints)."""
