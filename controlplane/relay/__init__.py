"""Sessions on the data path: client stream → inspection → audit commit → agent stream, and back."""
