"""lrkd: distil a slow reasoning LLM into a fast relevance encoder."""
from lrkd.run.resolvers import register_resolvers

register_resolvers()
__version__ = "0.1.0"
