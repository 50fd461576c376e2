"""Agents: enrollment, credentials, and the live control stream of each connected agent."""
