"""The pipeline's steps, in order: each reads only its recipe sections and earlier steps' files."""

STEPS: tuple[str, ...] = ("calibrate", "score", "search", "apply", "recover", "eval", "export")
