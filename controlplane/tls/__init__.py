"""TLS for the control plane's listeners: its own CA, its server certificate, reloading."""
