"""Wire protocols the gateway relays: sans-IO codecs that know bytes and messages, nothing else."""
