from nvlaunch.cli.main import main

__all__ = ["main"]
