"""``python -m modelyard.serving``: the ``modelyard serve`` command without the CLI package."""

from modelyard.serving.command import serve

if __name__ == "__main__":
    serve()
