"""Task data: the manifest, strict reading of raw files, prepared (tokenized) splits."""
