"""Terminal servers and the unattended accounts they host (the coordinator opens their sessions)."""
