"""Wire protocols the gateway relays: sans-IO codecs that know bytes and messages, nothing else.

Beside them, the few small things the control plane, the agent and the CLI must all do the same
way, with the standard library and the base dependencies only: the join token's text and its CA
pin (`jointoken`), the session a log line is about (`logcontext`), and the atomic write of keys,
certificates and credentials (`atomicfile`).
"""
