"""What a command does: run, drain, status, serve, systemd units, bench. May import: engines,
storage, core, config and vbatch's base modules."""
