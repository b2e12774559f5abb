"""The ``router`` CLI's subcommands, one module each (``router.cli`` dispatches to them)."""
