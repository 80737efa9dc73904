"""The stages of the loop. Each is a module with one entry function that reads files and writes files, so it runs
alone from the CLI on any file of the right schema, and the loop (`srlm.loop`) is these stages called in order."""
