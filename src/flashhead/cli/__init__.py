"""The `flashhead` command: one module per subcommand, each a thin wrapper over a library call."""
