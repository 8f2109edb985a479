"""Template tags: ``{% load channels_presence %}``."""
