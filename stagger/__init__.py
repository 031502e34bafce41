"""Stagger: place video-inference streams on shared GPUs and stagger their bodies."""

__version__ = "0.1.0"
