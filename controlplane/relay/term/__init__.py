"""Terminal streams on the control plane (ssh, shell): the inspector and the recordings."""
