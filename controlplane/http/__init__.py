"""The control plane's HTTP listener: health, Prometheus metrics and the SIEM export API."""
