"""Tokens, sessions, the audit log and the secrets file."""
