"""csm-serve: text-to-speech with Sesame's CSM-1B, served by Ray Serve."""

__version__ = "0.1.0"
