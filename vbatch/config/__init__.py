"""Settings as data: profiles, model names and resolution, run labels, the server's address and
key policy. May import: vbatch's base modules (errors, paths, processes)."""
