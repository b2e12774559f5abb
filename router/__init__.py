"""costroute: a cost-aware LLM query router and OpenAI-compatible gateway."""

__version__ = "0.1.0"
