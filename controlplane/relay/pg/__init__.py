"""PostgreSQL on the control plane: the inspector, its reading of SQL, and pg-listen."""
