"""Type stub of the compiled _llama module: the layer as a table of named steps."""
from smallmind.models._layer import Steps

LAYER: Steps
