"""The reconstruction engine: settings and devices (more of the engine moves here by concern)."""
