"""Type stub of the compiled _gemma3 module: the layer as a table of named steps."""
from smallmind.models._layer import Steps

LAYER: Steps
