"""A local GitHub: the REST subset the orchestrator uses, over real bare git repositories."""
