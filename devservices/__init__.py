"""Local stand-ins for the external services the orchestrator talks to, for tests and demos."""
