"""Notebook integration (IPython magics, rich display, widgets) on top of the public ldw API."""
