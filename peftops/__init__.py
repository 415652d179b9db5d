"""peftops: cheap, safe, tracked parameter-efficient adaptation of one pinned base model."""

__version__ = "0.1.0"
