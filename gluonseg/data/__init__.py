"""Training data: channels, label maps, Pipe-mode streams, transforms and generated datasets."""
