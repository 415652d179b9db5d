"""The pinned base model: its safetensors snapshot, digest and loading."""
