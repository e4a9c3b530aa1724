"""NATS subjects, message models and the connection helper."""
