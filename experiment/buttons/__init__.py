"""Button boxes on serial lines: byte decoders (pure) and the button side of a serial reader."""
