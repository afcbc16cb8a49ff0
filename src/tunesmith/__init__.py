"""tunesmith: turn a general-purpose LLM into a specialist for one organisation's task."""

__version__ = "0.1.0"
