"""compass's own errors. Every one carries a one-line message fit for the CLI (exit code 2).

Here: the root, and the file format's errors (raised by `bitstream`, and importable from it); the errors of the
API (`api`) and of entropy decoding (`entropy`) live beside the code that raises them.
"""


class CompassError(Exception):
    """Base class of all errors compass raises on bad input, damaged data or misuse."""


class BitstreamError(CompassError):
    """Data that is not a compass file, or one that is damaged, truncated or beyond the reader's limits."""


class BadMagic(BitstreamError):
    """The data does not start with the compass magic bytes."""


class UnsupportedVersion(BitstreamError):
    """The format version or header flags are not ones this reader knows."""


class HeaderError(BitstreamError):
    """The header is truncated, fails its CRC, or holds an invalid field."""


class LimitExceeded(BitstreamError):
    """The header declares more layers or pixels than the reader accepts; refused before anything is allocated."""


class LayerOutOfRange(BitstreamError, ValueError):
    """A layer was requested that the file does not hold."""


class ChunkError(BitstreamError):
    """Layer `layer`'s chunk is malformed (`detail` says how). Chunks of lower layers are unaffected."""

    def __init__(self, layer: int, detail: str):
        super().__init__(f"layer {layer}: {detail}")
        self.layer = layer
        self.detail = detail


class TruncatedChunk(ChunkError):
    """Layer `layer`'s chunk is missing or cut short: the file ends too early."""


class ChunkCRCMismatch(ChunkError):
    """Layer `layer`'s payload does not match its CRC32: the file is damaged."""
