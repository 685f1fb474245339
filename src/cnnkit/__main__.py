from cnnkit.cli import entry

entry()
