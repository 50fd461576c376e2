"""Finding sensitive values inside text: shared by the agent (masking results before they leave
its network) and the control plane (masking parameters before they are written to events)."""
