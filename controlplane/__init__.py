"""The Gatehouse control plane: authenticates, decides, records, then forwards."""
