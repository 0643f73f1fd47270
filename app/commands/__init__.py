"""`fleetgate` subcommands, one module per area; each has `register(commands, bench)`."""
