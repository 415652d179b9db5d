"""The ``peftops`` command line: the front end above the flows (``main`` is the entry point)."""
