"""One module per ``kpbench`` subcommand, each with ``add_parser(sub)``."""
