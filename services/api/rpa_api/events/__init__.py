"""The event stream for the SPA: Server-Sent Events read from JetStream (issue 13)."""
