"""Loopback fakes of the services the bot talks to (LLM server, chat platforms)."""
