"""A local stand-in for the Anthropic Messages API that plays scripted conversations to Claude Code."""
