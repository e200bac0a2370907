"""An example zigscan plugin (see plugin.py)."""
