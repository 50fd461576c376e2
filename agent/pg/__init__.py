"""PostgreSQL on the agent's side: log in to the target, relay, mark where results end."""
