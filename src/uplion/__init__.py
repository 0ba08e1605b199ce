"""uplion: serve any AI model, local or remote, behind one API."""

__version__ = "0.1.0"
