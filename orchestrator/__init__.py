"""orchestrator: Redis task queue -> Ansible playbooks (ansible-runner) -> progress and status on Redis."""

__version__ = "0.1.0"
