"""srlm: Self-Rewarding Language Models (Yuan et al., 2024) as a library and a command-line tool."""

__version__ = "0.1.0"
