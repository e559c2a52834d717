"""Facts of CSM's audio that every layer shares (the codec's geometry), at the bottom of the package:
anything may import this module, and it imports nothing of the package."""

SAMPLE_RATE = 24_000
"""Mimi's output sample rate (Hz)."""
FRAME_SAMPLES = 1_920
"""Samples in one Mimi frame (80 ms at 24 kHz)."""
FRAME_MS = 80
"""Milliseconds of audio in one frame."""
NUM_CODEBOOKS = 32
"""Mimi codebooks per frame: codes (frame, 32); a prompt row has one more column for text."""
MAX_POSITIONS = 2_048
"""Backbone positions (prompt rows plus generated frames) of CSM-1B."""
