from nvlaunch.cli import entry

entry()
